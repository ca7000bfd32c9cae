"""What each provider and model can do, from configuration: the capability table.

Providers retire and add models often, so none of this is in code. A provider's table in
``defaults.toml`` carries ``[providers.<name>.capabilities]`` for its models in general, and
``[providers.<name>.model_capabilities]`` keyed by model id overrides single keys for one model
(the same shape as ``prices``)::

    [providers.fal.capabilities]
    text_to_image = true
    reference_images = 0
    ...
    [providers.fal.model_capabilities]
    "fal-ai/flux-pro/kontext" = { reference_images = 4, reference_roles = ["subject", "style"] }

Routing (skip a provider that cannot serve a prompt, with the reason), validation before launch
(sizes, ``auto``, prompt length) and the prompt tools (each provider's prompt window) read it
through :func:`capabilities_for`; nothing else decides what a provider can take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from pipeline.components import REFERENCE_ROLES
from pipeline.config import from_table
from pipeline.errors import ConfigError

ROLES = REFERENCE_ROLES


@dataclass(frozen=True)
class Capabilities:
    """One provider+model's abilities. The defaults describe a text-only service."""

    text_to_image: bool = True
    # Edit / reference images: how many one call takes (0 = none) and which roles it understands.
    reference_images: int = 0
    reference_roles: tuple[str, ...] = ()
    mask: bool = False
    # What one reference (mask included) may be: its formats (MIME types) and its size in bytes.
    reference_formats: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
    reference_max_bytes: int = 10_000_000
    # "WxH" strings; "auto" lets the service choose; "any" = any WxH within [prompt] min/max_side.
    sizes: tuple[str, ...] = ("any",)
    seed: bool = False
    negative_prompt: bool = False
    max_n: int = 1  # images one call may return
    max_prompt_chars: int = 10000  # the service's hard maximum
    # The part of the prompt the model actually reads: characters, and tokens where the model
    # counts tokens (0 = no token window), counted by ``tokenizer`` ("clip", "t5", "estimate", "").
    prompt_window_chars: int = 10000
    prompt_window_tokens: int = 0
    tokenizer: str = ""

    def takes_size(self, size: str) -> bool:
        return size in self.sizes or (size != "auto" and "any" in self.sizes)

    def takes_references(self, count: int, roles: tuple[str, ...] = ()) -> str:
        """Why this provider cannot take ``count`` references with ``roles`` ("" = it can)."""
        if count and not self.reference_images:
            return "takes no reference images"
        if count > self.reference_images:
            return f"takes at most {self.reference_images} reference image(s), not {count}"
        if "mask" in roles and not self.mask:
            return "takes no mask"
        unknown = sorted({r for r in roles if r != "mask"} - set(self.reference_roles))
        if unknown:
            return f"does not take the reference role(s) {', '.join(unknown)}"
        return ""


_NAMES = frozenset(f.name for f in fields(Capabilities))


def capabilities_for(service_table: Mapping[str, Any], model: str = "", where: str = "provider") -> Capabilities:
    """The capabilities of ``model`` from a provider's settings table (``settings.component(...)``)."""
    table: dict[str, Any] = dict(service_table.get("capabilities", {}) or {})
    per_model = service_table.get("model_capabilities", {}) or {}
    if isinstance(per_model, Mapping) and isinstance(per_model.get(model), Mapping):
        table.update(per_model[model])
    unknown = sorted(set(table) - _NAMES)
    if unknown:
        raise ConfigError(f"[{where}.capabilities] declares {', '.join(unknown)}, which Capabilities does not take")
    bad_roles = sorted(set(table.get("reference_roles", ())) - set(ROLES))
    if bad_roles:
        raise ConfigError(f"[{where}.capabilities] reference_roles: unknown role(s) {', '.join(bad_roles)}; known: {', '.join(ROLES)}")
    return from_table(Capabilities, table)
