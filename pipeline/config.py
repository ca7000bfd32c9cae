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

Every default lives once, in ``defaults.toml``. The sections the pipeline reads are turned into
frozen typed tables when :class:`Settings` is made (``settings.run.iterations``), so a key the
file does not declare, or a field it lacks, fails at start-up rather than falling back to a
second default in code. An override file may only set keys the defaults declare (its own
providers, judges and refiners, and model names in ``prices`` tables, excepted): a misspelt key
is a :class:`ConfigError` naming the file and the key. Per-service tables (``[providers.fal]``)
stay dicts, read by their service.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
DEFAULTS_FILE = PACKAGE_DIR / "defaults.toml"
COMPONENT_KINDS = ("providers", "judges", "refiners")
# Sub-tables of a service whose keys are the service's own business: model names (prices), or
# request parameters passed to the service as they are.
FREE_FORM_TABLES = frozenset({"prices", "token_prices", "parameters", "model_capabilities"})
T = TypeVar("T")


# ---- Typed tables: one per section the code reads; the values come from defaults.toml only ------
@dataclass(frozen=True)
class PromptSettings:
    template: str
    default_size: str
    max_chars: int
    min_side: int
    max_side: int


@dataclass(frozen=True)
class PromptSetSettings:
    max_bytes: int
    max_prompts: int
    max_depth: int
    max_references: int  # reference images one prompt may send (its own and its characters')
    max_characters: int
    bundle_max_bytes: int  # a zip bundle (or folder) and everything unpacked from it
    bundle_max_files: int
    bundle_max_ratio: int  # unpacked / packed size of one zip member: more is a decompression bomb
    reference_max_bytes: int  # one reference image file


@dataclass(frozen=True)
class RunSettings:
    iterations: int
    max_iterations: int
    concurrency: int
    max_concurrency: int
    providers: tuple[str, ...]
    judge: str
    refiner: str
    routing: str
    block_rewrites: int
    block_rewrite_hint: str


@dataclass(frozen=True)
class ScoringSettings:
    faithfulness_weight: float


@dataclass(frozen=True)
class ImageSettings:
    max_pixels: int
    thumbnail_side: int
    thumbnail_format: str
    thumbnail_quality: int


@dataclass(frozen=True)
class RunnerSettings:
    stop_grace_s: float
    cancel_wait_s: float
    parallel_runs: int


@dataclass(frozen=True)
class LogSettings:
    max_bytes: int
    backup_count: int
    keep_files: int


TYPED_SECTIONS: dict[str, type] = {"prompt": PromptSettings, "promptset": PromptSetSettings, "run": RunSettings,
                                   "runner": RunnerSettings, "logs": LogSettings, "scoring": ScoringSettings,
                                   "images": ImageSettings}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """A table's field types, worked out once (``get_type_hints`` compiles every annotation anew:
    10 % of a run's CPU when a table is read per call)."""
    return typing.get_type_hints(cls)


def _cast(cls: type, name: str, value: Any, where: str) -> Any:
    """``value`` as the field's annotated type (TOML ints where a float is wanted, lists as tuples)."""
    wanted = _type_hints(cls)[name]
    try:
        if typing.get_origin(wanted) is tuple:
            if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(typing.get_args(wanted)[0](v) for v in value)
        if wanted is bool and not isinstance(value, bool) or wanted is not bool and isinstance(value, bool):
            raise TypeError
        if wanted in (int, float) and not isinstance(value, (int, float)) or wanted is str and not isinstance(value, str):
            raise TypeError
        if wanted is int and value != int(value):  # 2.5 iterations is a mistake, not 2
            raise ValueError
        return wanted(value)
    except (TypeError, ValueError):
        kind = getattr(wanted, "__name__", str(wanted))
        raise ConfigError(f"{where}: {name} = {value!r} is not a valid {kind}") from None


def typed_table(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """A typed table with exactly the keys ``values`` has: a field it lacks, or a key no field
    takes, is a :class:`ConfigError` (the defaults and the code disagree)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    missing, unknown = sorted(names - set(values)), sorted(set(values) - names)
    if missing:
        raise ConfigError(f"{DEFAULTS_FILE}: [{where}] does not declare {', '.join(missing)}, which the code reads")
    if unknown:
        raise ConfigError(f"{DEFAULTS_FILE}: [{where}] declares {', '.join(unknown)}, which {cls.__name__} does not take")
    return cls(**{k: _cast(cls, k, v, f"[{where}]") for k, v in values.items()})


def from_table(cls: type[T], values: Mapping[str, Any]) -> T:
    """A settings dataclass from a table that may hold other keys too (a service's table): the
    keys it has fields for, each cast to the field's type; the rest of its fields keep their
    defaults (filled from defaults.toml by :func:`defaults_from`)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: _cast(cls, k, v, cls.__name__) for k, v in values.items() if k in names})


def defaults_from(*path: str) -> Callable[[type[T]], type[T]]:
    """Class decorator, applied under ``@dataclass``: each field's default is its key in
    defaults.toml at ``path``, so the value is written in one place only."""

    def fill(cls: type[T]) -> type[T]:
        table = _table(shipped_values(), path)
        where = ".".join(path)
        for name in (n for n, a in cls.__annotations__.items() if not str(a).startswith(("ClassVar", "typing.ClassVar"))):
            if name not in table:
                raise ConfigError(f"{DEFAULTS_FILE}: [{where}] does not declare {name}, which {cls.__name__} reads")
            setattr(cls, name, _cast(cls, name, table[name], f"[{where}]"))
        return cls

    return fill


def _table(values: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = values
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


# ---- Reading and merging the files ------------------------------------------------------------
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


@functools.cache
def shipped_values() -> dict[str, Any]:
    """``defaults.toml`` as read (once per process; callers copy before changing it)."""
    return _read_toml(DEFAULTS_FILE)


def _same_kind(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace ``default``: numbers for numbers (the typed table then refuses
    a fraction where a count is wanted), text for text, a list for a list, a table for a table."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float))
    for kind in (str, list, dict):
        if isinstance(default, kind):
            return isinstance(value, kind)
    return True


def _service_keys(defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Keys any declared service's table may set: every key some service declares, and the
    shared tables a service may override for itself (``[providers.fal.limits]``)."""
    keys: dict[str, Any] = {}
    for kind in COMPONENT_KINDS:
        for table in defaults.get(kind, {}).values():
            keys.update({k: v for k, v in table.items() if k not in keys})
    keys.update(defaults.get("resilience", {}))
    if isinstance(defaults.get("network"), dict):
        keys.update({k: v for k, v in defaults["network"].items() if k not in keys})
        keys["network"] = defaults["network"]
    return keys


def check_override(path: Path, defaults: Mapping[str, Any], override: Mapping[str, Any]) -> None:
    """Refuse a key the defaults do not declare, or a value of another kind, naming file and key."""
    service_keys = _service_keys(defaults)

    def walk(declared: Mapping[str, Any], given: Mapping[str, Any], where: tuple[str, ...]) -> None:
        for key, value in given.items():
            at = (*where, key)
            dotted = ".".join(at)
            if len(where) == 1 and where[0] in COMPONENT_KINDS:  # [providers.<name>]
                if not isinstance(value, dict):
                    raise ConfigError(f"{path}: {dotted} must be a table, like [{dotted}]")
                if key in declared:  # a plugin's own table is its own business
                    walk(service_keys, value, at)
                continue
            if key not in declared:
                raise ConfigError(f"{path}: unknown key {dotted!r}: pipeline/defaults.toml declares no such setting "
                                  "(check the spelling and the [table] it is under)")
            default = declared[key]
            if not _same_kind(default, value):
                kind = "number" if isinstance(default, (int, float)) and not isinstance(default, bool) else type(default).__name__
                raise ConfigError(f"{path}: {dotted} = {value!r} should be a {kind}, like the default {default!r}")
            if isinstance(value, dict) and key not in FREE_FORM_TABLES:
                walk(default, value, at)

    walk(defaults, override, ())


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    values: dict[str, Any] = field(repr=False)
    storage_url: str = ""  # DARKROOM_STORAGE_URL: s3://bucket/prefix keeps images and sidecars there; "" = the data folder
    # Typed tables, built once from ``values`` when the settings are made.
    prompt: PromptSettings = field(init=False, repr=False)
    promptset: PromptSetSettings = field(init=False, repr=False)
    run: RunSettings = field(init=False, repr=False)
    runner: RunnerSettings = field(init=False, repr=False)
    logs: LogSettings = field(init=False, repr=False)
    scoring: ScoringSettings = field(init=False, repr=False)
    images: ImageSettings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, cls in TYPED_SECTIONS.items():
            object.__setattr__(self, name, typed_table(cls, self.values.get(name, {}), name))

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        data_dir = Path(env.get("DARKROOM_DATA_DIR") or PROJECT_DIR / "data").expanduser().resolve()
        database_url = env.get("DARKROOM_DATABASE_URL") or f"sqlite:///{data_dir / 'darkroom.db'}"
        storage_url = (env.get("DARKROOM_STORAGE_URL") or "").strip()
        if storage_url and (not re.fullmatch(r"s3://[^/@?#\s]+(/[^?#\s]*)?", storage_url) or ".." in storage_url.split("/")):
            shown = repr(storage_url) if "@" not in storage_url else "a URL with credentials in it (they belong in AWS_* variables)"
            raise ConfigError(f"DARKROOM_STORAGE_URL: {shown} is not an S3 location; write it as s3://bucket or "
                              "s3://bucket/prefix, or unset it to keep images in the data folder")
        values = copy.deepcopy(shipped_values())
        override = env.get("DARKROOM_CONFIG")
        override_path = Path(override).expanduser() if override else data_dir / "darkroom.toml"
        if not (override or override_path.exists()):
            return cls(data_dir=data_dir, database_url=database_url, values=values, storage_url=storage_url)
        changes = _read_toml(override_path)
        check_override(override_path, values, changes)
        try:
            return cls(data_dir=data_dir, database_url=database_url, values=_merge(values, changes), storage_url=storage_url)
        except ConfigError as e:
            raise ConfigError(f"{override_path}: {e}") from None

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

    # ---- Untyped tables ----------------------------------------------------------------------
    def section(self, *keys: str) -> dict[str, Any]:
        """A nested table as a dict, ``{}`` when absent: the shared tables a service may override
        for itself (``resilience.retry``). The sections with typed tables are read through them."""
        return _table(self.values, keys)

    def component(self, kind: str, name: str) -> dict[str, Any]:
        """Settings of one provider/judge/refiner, e.g. ``component("providers", "offline")``."""
        return self.section(kind, name)

    def plugin_modules(self, env: dict[str, str] | None = None) -> list[str]:
        raw = (os.environ if env is None else env).get("DARKROOM_PLUGINS", "")
        return [m.strip() for m in raw.split(",") if m.strip()]


@functools.cache
def shipped() -> Settings:
    """The shipped defaults as typed tables, for values a signature needs before any settings
    are read (``compose_prompt``'s template, ``Limits()``). Paths here mean nothing."""
    return Settings(data_dir=PROJECT_DIR / "data", database_url="", values=copy.deepcopy(shipped_values()))
