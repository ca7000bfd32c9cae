"""Cost of a call when the service does not report one, from the configured price table.

A component's table (e.g. ``[providers.fal]``) may set ``price_per_image``,
``price_per_megapixel`` (billed per started megapixel) or ``price_per_call``; a ``[...prices]``
sub-table keyed by model replaces them for that model
(a per-image model of a per-megapixel service costs its own price per image).
"""

from __future__ import annotations

import math
from typing import Any

PRICE_KEYS = ("price_per_megapixel", "price_per_image", "price_per_call")


def table_cost(component_settings: dict[str, Any], model: str = "", width: int = 0, height: int = 0) -> float | None:
    prices = component_settings.get("prices")
    own = prices.get(model, {}) if isinstance(prices, dict) else {}
    # A model's own price replaces the service's whole price (a per-image model of a per-megapixel service).
    table = dict(own) if any(k in own for k in PRICE_KEYS) else dict(component_settings)
    if "price_per_megapixel" in table and width and height:
        return float(table["price_per_megapixel"]) * math.ceil(width * height / 1_000_000)
    for key in ("price_per_image", "price_per_call"):
        if key in table:
            return float(table[key])
    return None
