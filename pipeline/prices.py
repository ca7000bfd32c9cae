"""Cost of a call when the service does not report one, from the configured price table.

A component's table (e.g. ``[providers.fal]``) may set ``price_per_image``,
``price_per_megapixel`` (billed per started megapixel) or ``price_per_call``; a ``[...prices]``
sub-table keyed by model overrides them for that model.
"""

from __future__ import annotations

import math
from typing import Any


def table_cost(component_settings: dict[str, Any], model: str = "", width: int = 0, height: int = 0) -> float | None:
    table = dict(component_settings)
    table.update(component_settings.get("prices", {}).get(model, {}) if isinstance(component_settings.get("prices"), dict) else {})
    if "price_per_megapixel" in table and width and height:
        return float(table["price_per_megapixel"]) * math.ceil(width * height / 1_000_000)
    for key in ("price_per_image", "price_per_call"):
        if key in table:
            return float(table[key])
    return None
