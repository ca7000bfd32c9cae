"""Where things live and what the configuration says.

Runtime paths come from environment variables; model IDs, prices and limits from TOML
(``pipeline/defaults.toml`` merged with an override file), never from code.

- ``DARKROOM_DATA_DIR``: the data folder (default: ``data/`` beside the ``pipeline`` package).
  The database (with the gallery thumbnails), run outputs, logs and exports all live below it.
- ``DARKROOM_DATABASE_URL``: any SQLAlchemy URL (default: SQLite at ``<data dir>/darkroom.db``).
- ``DARKROOM_CONFIG``: a TOML file merged over the defaults (default: ``<data dir>/darkroom.toml``
  when it exists).
- ``DARKROOM_PLUGINS``: comma-separated module names imported at start-up so that they can
  register extra providers, judges and refiners.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULTS_FILE = PACKAGE_DIR / "defaults.toml"
T = TypeVar("T")


def from_table(cls: type[T], values: Mapping[str, Any]) -> T:
    """A settings dataclass from a configuration table: known keys, each cast to its default's type."""
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    return cls(**{k: type(getattr(cls, k))(v) for k, v in values.items() if k in fields})


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    values: dict[str, Any] = field(repr=False)

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        data_dir = Path(env.get("DARKROOM_DATA_DIR") or PROJECT_DIR / "data").expanduser().resolve()
        database_url = env.get("DARKROOM_DATABASE_URL") or f"sqlite:///{data_dir / 'darkroom.db'}"
        values = _read_toml(DEFAULTS_FILE)
        override = env.get("DARKROOM_CONFIG")
        override_path = Path(override).expanduser() if override else data_dir / "darkroom.toml"
        if override or override_path.exists():
            values = _merge(values, _read_toml(override_path))
        return cls(data_dir=data_dir, database_url=database_url, values=values)

    # ---- Paths below the data folder -------------------------------------------------------
    @property
    def runs_dir(self) -> Path:
        return self.data_dir / "runs"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def samples_dir(self) -> Path:
        """The sample prompt sets shipped with the code (not under a custom data folder)."""
        return PROJECT_DIR / "data" / "samples"

    # ---- Configuration values ---------------------------------------------------------------
    def section(self, *keys: str) -> dict[str, Any]:
        """A nested table of the configuration, ``{}`` when absent."""
        node: Any = self.values
        for key in keys:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, dict) else {}

    def component(self, kind: str, name: str) -> dict[str, Any]:
        """Settings of one provider/judge/refiner, e.g. ``component("providers", "offline")``."""
        return self.section(kind, name)

    def plugin_modules(self, env: dict[str, str] | None = None) -> list[str]:
        raw = (os.environ if env is None else env).get("DARKROOM_PLUGINS", "")
        return [m.strip() for m in raw.split(",") if m.strip()]
