"""Providers, judges and refiners by name.

Built-ins register themselves in their package's ``__init__`` like any plugin would; extra
modules named in ``DARKROOM_PLUGINS`` are imported to register theirs. Tests register fakes
the same way and unregister them afterwards.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Generic, TypeVar

from pipeline.components import Component, ImageProvider, Judge, Refiner
from pipeline.config import Settings
from pipeline.errors import ConfigError

C = TypeVar("C", bound=Component)


class Registry(Generic[C]):
    def __init__(self, kind: str, singular: str) -> None:
        self.kind = kind
        self.singular = singular
        self._classes: dict[str, type[C]] = {}
        self._aliases: dict[str, str] = {}

    def register(self, cls: type[C], *, aliases: Iterable[str] = ()) -> type[C]:
        self._classes[cls.name] = cls
        for alias in aliases:
            self._aliases[alias] = cls.name
        return cls

    def unregister(self, name: str) -> None:
        self._classes.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get_class(self, name: str) -> type[C]:
        ensure_loaded()
        key = self._aliases.get(name, name)
        if key not in self._classes:
            known = ", ".join(self.names()) or "none"
            raise ConfigError(f'unknown {self.singular} "{name}"; known: {known}')
        return self._classes[key]

    def create(self, name: str, settings: Settings) -> C:
        """An instance with its own table's settings, over ``[network]`` (body caps, where keys may go)."""
        cls = self.get_class(name)
        return cls({**settings.section("network"), **settings.component(self.kind, cls.name)})


providers: Registry[ImageProvider] = Registry("providers", "provider")
judges: Registry[Judge] = Registry("judges", "judge")
refiners: Registry[Refiner] = Registry("refiners", "refiner")

_loaded: set[str] = set()
BUILTIN_MODULES = ("pipeline.services",)


def ensure_loaded(plugins: Iterable[str] = ()) -> None:
    """Import the built-ins and any plugin modules (each once)."""
    for module in (*BUILTIN_MODULES, *plugins):
        if module not in _loaded:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f'cannot import plugin module "{module}": {e}') from None
            _loaded.add(module)
