"""Which providers, judges and refiners exist and which are configured on this machine.

"Configured" means every environment variable a component needs is set (its key and, for
some, a URL). Streamlit exports root-level keys of ``.streamlit/secrets.toml`` as environment
variables, so both places work. Only presence is reported: a key's value never leaves here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline import registry
from pipeline.components import Component
from pipeline.config import Settings
from pipeline.errors import DarkroomError
from pipeline.services.remote import Probe, Probing

KINDS: dict[str, registry.Registry[Any]] = {"providers": registry.providers, "judges": registry.judges, "refiners": registry.refiners}


@dataclass(frozen=True)
class ComponentInfo:
    kind: str
    name: str
    display_name: str
    offline: bool
    key_env_var: str | None
    key_present: bool
    missing: tuple[str, ...]  # required environment variables that are not set
    base_url_env_var: str | None
    base_url: str  # the override if set, else the default; URLs are not secrets

    @property
    def configured(self) -> bool:
        return not self.missing


def describe(cls: type[Component], env: Mapping[str, str] | None = None) -> ComponentInfo:
    env = os.environ if env is None else env
    needed = tuple(v for v in (cls.key_env_var, *cls.required_env_vars) if v)
    base_url = env.get(cls.base_url_env_var, "") if cls.base_url_env_var else ""
    return ComponentInfo(
        kind=cls.kind, name=cls.name, display_name=cls.display_name(), offline=cls.offline,
        key_env_var=cls.key_env_var, key_present=bool(cls.key_env_var and env.get(cls.key_env_var)),
        missing=tuple(v for v in needed if not env.get(v)), base_url_env_var=cls.base_url_env_var,
        base_url=base_url or cls.default_base_url,
    )


def catalog(env: Mapping[str, str] | None = None) -> list[ComponentInfo]:
    """Every registered component, offline ones first within each kind."""
    registry.ensure_loaded()
    out = []
    for reg in KINDS.values():
        infos = [describe(reg.get_class(name), env) for name in reg.names()]
        out.extend(sorted(infos, key=lambda i: (not i.offline, i.name)))
    return out


def configured_names(kind: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Names a run may use for ``kind`` ("providers", "judges", "refiners"): the configured ones."""
    return [i.name for i in catalog(env) if i.kind == kind and i.configured]


def test_connection(kind: str, name: str, settings: Settings) -> Probe:
    """Settings' **Test connection**: build the component from its settings and make its probe request.

    Run on a thread of its own, so it works whether or not the caller's thread has an event loop.
    """
    try:
        component = getattr(registry, kind).create(name, settings)
    except DarkroomError as e:
        return Probe(False, str(e))
    if not isinstance(component, Probing):
        return Probe(True, "runs on this machine: nothing to connect to")
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, component.probe()).result()
