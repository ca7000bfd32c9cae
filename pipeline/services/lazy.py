"""A module imported on first use: a vendor SDK costs start-up time only when its service is used.

``openai`` and ``google-genai`` take about a second to import between them; the dashboard and
the CLI import every service module to list them, most with no key set. A vendor module binds
``openai = lazy_module("openai")`` (and imports the real one under ``TYPE_CHECKING`` for the
types), and the first attribute read imports it.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it at the first attribute read."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{' (imported)' if self._module is not None else ''}>"


def lazy_module(name: str) -> Any:
    return LazyModule(name)
