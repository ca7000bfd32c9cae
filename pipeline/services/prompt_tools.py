"""Compression and enhancement through chat services, with the offline tools as the last resort.

Each tool is a chain: the chat services named in ``[prompt_tools] compressors`` / ``enhancers``
(Ollama, Gemini, OpenAI by default; one without its key is left out), then the offline
compressor or enhancer, which needs no network. A service's answer is checked element by
element (:mod:`pipeline.prompts.critical`): one that drops a critical element is asked once
more with the missing elements named; if it still drops one it is refused (never sent) and the
next service is tried. Every attempt — service, model, cost, outcome, what was missing — is
kept in the result's ``attempts`` for the call log.

:func:`windows_for` reads each provider's window from the capability table, for the model the
provider is configured with.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline import registry
from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.prompts.compression import Compression, compress_offline
from pipeline.prompts.critical import Anchor, missing
from pipeline.prompts.enhancement import enhance_offline
from pipeline.prompts.windows import Window
from pipeline.services import wire
from pipeline.services.capabilities import capabilities_for
from pipeline.services.catalog import describe
from pipeline.services.chat import ChatService

log = logging.getLogger("pipeline.services.prompt_tools")

COMPRESSION_SCHEMA: dict[str, Any] = {
    "title": "CompressedPrompt", "type": "object", "required": ["prompt"],
    "properties": {"prompt": {"type": "string"}},
}
ENHANCEMENT_SCHEMA: dict[str, Any] = {
    "title": "EnhancedPrompt", "type": "object", "required": ["prompt", "rationale"],
    "properties": {"prompt": {"type": "string"}, "rationale": {"type": "string"}},
}
COMPRESS_SYSTEM = (
    "You shorten text-to-image prompts. Rewrite the prompt in at most {chars} characters. Keep every element listed under "
    "'Must keep' word for word (subjects, counts, names, quoted text, colours, any non-Latin text exactly as written). Drop "
    "repetition and filler first, then secondary description. Keep the prompt's language. Answer only the new prompt."
)
ENHANCE_SYSTEM = (
    "You improve text-to-image prompts before the first image. Add concrete composition, lighting, style and detail "
    "wording. Never change the subject, the counts, or any named element; keep every element listed under 'Must keep' word "
    "for word, and keep the style given under 'Style' if there is one. Stay under {chars} characters. Answer the new prompt "
    "and a one-sentence rationale."
)


def windows_for(settings: Settings, providers: Sequence[str]) -> list[Window]:
    """Each provider's window, for its configured model (an unknown name raises the registry's error)."""
    out: list[Window] = []
    for name in providers:
        cls = registry.providers.get_class(name)  # not built: reading a window needs no key
        table = settings.component("providers", cls.name)
        model = wire.setting(cls.model_env_var, table, "model")
        caps = capabilities_for(table, model, where=f"providers.{cls.name}")
        out.append(Window(cls.name, model, caps.max_prompt_chars, caps.prompt_window_chars, caps.prompt_window_tokens, caps.tokenizer))
    return out


def chat_services(settings: Settings, names: Sequence[str]) -> list[ChatService]:
    """The chat refiners among ``names`` that have what they need (a key, a base URL)."""
    out: list[ChatService] = []
    for name in names:
        if name not in registry.refiners.names():
            continue
        if describe(registry.refiners.get_class(name)).missing:
            continue
        service = registry.refiners.create(name, settings)
        if isinstance(service, ChatService):
            out.append(service)
    return out


def _must_keep(anchors: Sequence[Anchor]) -> str:
    return "\n".join(f"- {' + '.join(a.terms)}" for a in anchors) or "- (nothing listed)"


def _prompt_of(service: str, text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        raise ProviderError(f"{service} answered text that is not JSON", kind="malformed") from None
    prompt = body.get("prompt") if isinstance(body, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        raise ProviderError(f"{service} answered no prompt", kind="malformed")
    return prompt.strip()


@dataclass(frozen=True)
class Rewrite:
    text: str
    service: str
    model: str = ""
    cost_usd: float | None = None
    rationale: str = ""
    attempts: tuple[dict[str, str], ...] = field(default=())


async def _ask_keeping(service: ChatService, system: str, user: str, schema: dict[str, Any], anchors: Sequence[Anchor],
                       acceptable: Callable[[str], str], attempts: list[dict[str, str]]) -> Rewrite:
    """The service's rewrite, asked twice at most: the second time naming what the first dropped.
    Raises :class:`ProviderError` (``malformed``) when it still drops an element or is unacceptable."""
    cost = 0.0
    request = user
    for round_ in (1, 2):
        answer = await service.ask(system, request, schema)
        cost += answer.cost_usd or 0.0
        text = _prompt_of(service.name, answer.text)
        dropped = missing(anchors, text)
        why = acceptable(text)
        if not dropped and not why:
            rationale = ""
            try:
                rationale = str(json.loads(answer.text).get("rationale", ""))[:500]
            except (ValueError, AttributeError):
                pass
            return Rewrite(text, service.name, answer.model, cost, rationale, tuple(attempts))
        problem = f"dropped {', '.join(a.label for a in dropped)}" if dropped else why
        attempts.append({"service": service.name, "model": answer.model, "round": str(round_), "outcome": "refused",
                         "why": problem, "cost_usd": str(answer.cost_usd or 0.0)})
        if dropped:
            request = (f"{user}\n\nYour last answer dropped these elements; every one must be in the prompt, word for word:\n"
                       f"{_must_keep(dropped)}\nYour last answer:\n{text}")
        else:
            request = f"{user}\n\nYour last answer was refused: {why}. Your last answer:\n{text}"
    raise ProviderError(f"{service.name}: {attempts[-1]['why']} twice", kind="malformed")


def _compress_request(text: str, window: Window, anchors: Sequence[Anchor]) -> tuple[str, str, Callable[[str], str]]:
    budget = window.char_budget(text)
    user = f"Must keep:\n{_must_keep(anchors)}\n\nTarget: at most {budget} characters.\n\nPrompt:\n{text}"

    def acceptable(candidate: str) -> str:
        fit = window.fit(candidate)
        return f"{fit.describe()}, over {window.provider}'s window" if fit.over_window else ""

    return COMPRESS_SYSTEM.format(chars=budget), user, acceptable


async def compress_with(service: ChatService, text: str, window: Window, anchors: Sequence[Anchor],
                        attempts: list[dict[str, str]] | None = None) -> Compression:
    """One chat service's compression of ``text`` for ``window``; :class:`ProviderError` when the
    service fails or its answer (after one retry naming what it dropped) misses an element or the window."""
    system, user, acceptable = _compress_request(text, window, anchors)
    done = await _ask_keeping(service, system, user, COMPRESSION_SCHEMA, anchors, acceptable, attempts if attempts is not None else [])
    return Compression(text, done.text, service.name, len(anchors), model=done.model, cost_usd=done.cost_usd, attempts=done.attempts)


def _enhance_request(text: str, anchors: Sequence[Anchor], style: str, max_chars: int) -> tuple[str, str, Callable[[str], str]]:
    def acceptable(candidate: str) -> str:
        if len(candidate) > max_chars:
            return f"{len(candidate):,} characters, over the limit of {max_chars:,}"
        if style.strip() and style.strip().lower() not in candidate.lower():
            return f'the style "{style.strip()}" is missing'
        return ""

    user = f"Must keep:\n{_must_keep(anchors)}\n\nStyle: {style.strip() or '(none)'}\n\nPrompt:\n{text}"
    return ENHANCE_SYSTEM.format(chars=max_chars), user, acceptable


async def enhance_with(service: ChatService, text: str, anchors: Sequence[Anchor], *, style: str = "", max_chars: int = 10000,
                       attempts: list[dict[str, str]] | None = None) -> Rewrite:
    """One chat service's enhancement; :class:`ProviderError` when it fails or drops an element or the style."""
    system, user, acceptable = _enhance_request(text, anchors, style, max_chars)
    return await _ask_keeping(service, system, user, ENHANCEMENT_SCHEMA, anchors, acceptable, attempts if attempts is not None else [])


def enhance_fallback(text: str, *, style: str = "", max_chars: int = 10000, attempts: Sequence[dict[str, str]] = ()) -> Rewrite:
    """The offline enhancer's rewrite (the prompt unchanged if even that would pass ``max_chars``)."""
    enhanced, added = enhance_offline(text, style)
    if len(enhanced) > max_chars:
        enhanced, added = text, []
    return Rewrite(enhanced, "offline", "offline-rules", 0.0, f"added {', '.join(added)}" if added else "nothing to add",
                   tuple(attempts))


def _not_used(attempts: list[dict[str, str]], service: ChatService, e: ProviderError) -> None:
    if not attempts or attempts[-1].get("service") != service.name or attempts[-1].get("outcome") != "refused":
        attempts.append({"service": service.name, "model": service.model, "outcome": e.kind, "why": str(e)[:300]})


class PromptTools:
    """Compression and enhancement chains over ``compressors`` / ``enhancers`` (chat services),
    without a run: for ``check``, the bench and the API. A run sends the same calls through its
    step ledger (call log, budget) instead."""

    def __init__(self, compressors: Sequence[ChatService] = (), enhancers: Sequence[ChatService] = ()) -> None:
        self.compressors, self.enhancers = list(compressors), list(enhancers)

    @classmethod
    def from_settings(cls, settings: Settings) -> PromptTools:
        table = settings.section("prompt_tools")
        return cls(chat_services(settings, list(table.get("compressors", []))),
                   chat_services(settings, list(table.get("enhancers", []))))

    async def compress(self, text: str, window: Window, anchors: Sequence[Anchor]) -> Compression:
        """``text`` made to fit ``window`` keeping every anchor: the first service whose answer
        fits and keeps them all, else the offline compressor."""
        if not window.fit(text).over_window:
            return Compression(text, text, "none", len(anchors))
        attempts: list[dict[str, str]] = []
        for service in self.compressors:
            try:
                return await compress_with(service, text, window, anchors, attempts)
            except ProviderError as e:
                _not_used(attempts, service, e)
                log.info("compression on %s not used: %s", service.name, e)
        offline = compress_offline(text, anchors, lambda t: not window.fit(t).over_window)
        return Compression(text, offline.text, "offline", len(anchors), missing=offline.missing, window_hit=offline.window_hit,
                           cost_usd=0.0, attempts=tuple(attempts))

    async def fit_all(self, text: str, windows: Sequence[Window], anchors: Sequence[Anchor]) -> dict[str, Compression]:
        """A version for every provider whose window ``text`` is over (each fitting its own window;
        providers with the same window share one compression)."""
        done: dict[tuple[int, int, str], Compression] = {}
        out: dict[str, Compression] = {}
        for w in windows:
            if not w.fit(text).over_window:
                continue
            key = (min(w.chars, w.max_chars), w.tokens, w.tokenizer)
            if key not in done:
                done[key] = await self.compress(text, w, anchors)
            out[w.provider] = done[key]
        return out

    async def enhance(self, text: str, anchors: Sequence[Anchor], *, style: str = "", max_chars: int = 10000) -> Rewrite:
        """``text`` with composition, lighting, style and detail added, every anchor and the style kept."""
        attempts: list[dict[str, str]] = []
        for service in self.enhancers:
            try:
                return await enhance_with(service, text, anchors, style=style, max_chars=max_chars, attempts=attempts)
            except ProviderError as e:
                _not_used(attempts, service, e)
                log.info("enhancement on %s not used: %s", service.name, e)
        return enhance_fallback(text, style=style, max_chars=max_chars, attempts=attempts)
