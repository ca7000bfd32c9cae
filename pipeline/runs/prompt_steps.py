"""A prompt job's prompt tools: enhancement before iteration 1, and a version per provider window.

- **Enhancement** (run option ``enhance``; a prompt with ``"enhance": false`` is skipped) runs
  once, before the first image, through the ``[prompt_tools] enhancers`` chat services and then
  the offline enhancer. It is stored as a :class:`Refinement` *from iteration 0*, so the results
  sidecar, resume and the Gallery treat it as its own step before iteration 1 (before → after,
  rationale, cost). The enhanced text is checked again against every provider's window.
- **Compression**: before each generation, every provider whose window the iteration's prompt is
  over gets its own version, through the ``[prompt_tools] compressors`` chat services and then
  the offline compressor. Each chat call goes through the step ledger (call log, budget, cost);
  the iteration's ``prompt_text`` stays the original, and ``routing["compressed"]`` keeps, per
  provider, the version sent with its report (ratio, elements kept, window hit, service, cost).
  A resumed iteration reuses the versions stored for the same text.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.components import Element, Refiner
from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.prompts.compression import Compression, compress_offline
from pipeline.prompts.critical import Anchor, anchors_for, present
from pipeline.prompts.windows import Window
from pipeline.resilience.routing import ServiceChain, member_for
from pipeline.runs.ledger import Call
from pipeline.runs.prompt_check import check_rewrite
from pipeline.services.chat import ChatService
from pipeline.services.prompt_tools import Rewrite, chat_services, compress_with, enhance_fallback, enhance_with, windows_for
from pipeline.store.models import Iteration, Refinement
from pipeline.store.statements import update_row

if TYPE_CHECKING:
    from pipeline.runs.job import PromptJob

log = logging.getLogger("pipeline.runs.prompt_steps")


def _chain(settings: Settings, role: str, key: str) -> ServiceChain[Refiner] | None:
    services = [s for s in chat_services(settings, list(settings.section("prompt_tools").get(key, []))) if isinstance(s, Refiner)]
    return ServiceChain(role, [member_for(settings, s) for s in services]) if services else None


def _chat(component: Refiner) -> ChatService:
    assert isinstance(component, ChatService)  # _chain keeps only chat services
    return component


class PromptSteps:
    def __init__(self, job: PromptJob, elements: Sequence[Element]) -> None:
        self.job = job
        self.settings = job.ctx.settings
        self.windows: list[Window] = windows_for(self.settings, job.ctx.config.providers)
        self.elements = tuple(elements)

    def anchors(self, text: str) -> list[Anchor]:
        """The critical elements ``text`` names (from the decomposition and the rule-based reading)."""
        return [a for a in anchors_for(text, self.elements) if present(a, text)]

    # ---- enhancement ---------------------------------------------------------------------------
    def wanted(self) -> bool:
        return bool(self.job.ctx.config.enhance) and self.job.spec.metadata.get("enhance") is not False

    async def first_prompt(self) -> str:
        """The text of iteration 1: the enhanced prompt when enhancement is on, else the original."""
        job = self.job
        if not self.wanted():
            return job.original_text
        done = job.refinements.get(0)
        if done is not None:
            return done.new_prompt
        job._check_stop()
        text = job.original_text
        anchors = self.anchors(text)
        style = job.spec.style.strip()
        max_chars = min([self.settings.prompt.max_chars, *(w.max_chars for w in self.windows)])
        chain = _chain(self.settings, "enhancer", "enhancers")
        call: Call[Refiner, Rewrite] | None = None
        failed = ""
        if chain is not None:
            try:
                call = await job.ledger.call(chain, "enhance", 0, lambda r: enhance_with(_chat(r), text, anchors, style=style,
                                                                                        max_chars=max_chars))
            except ProviderError as e:
                failed = str(e)[:300]
                log.info("%s: no chat service enhanced the prompt (%s); the offline enhancer does", job.prompt.key, e)
        rewrite = call.value if call is not None else enhance_fallback(text, style=style, max_chars=max_chars)
        errors, compress_for = check_rewrite(rewrite.text, self.windows, path=f"{job.prompt.key}.enhanced", what="enhanced")
        if errors:  # cannot happen with max_chars above; kept so a rewrite can never outgrow a hard maximum
            rewrite = Rewrite(text, rewrite.service, rewrite.model, rewrite.cost_usd, f"enhancement refused: {errors[0]}")
        edit: dict[str, Any] = {"op": "enhance", "from": text, "service": rewrite.service, "elements_kept": len(anchors),
                                "compress_for": compress_for}
        if failed:
            edit["chat_failed"] = failed
        ref = Refinement(run_item_id=job.item_id, from_iteration=0, new_prompt=rewrite.text, refiner=rewrite.service,
                         model=rewrite.model, rationale=f"Enhanced before iteration 1: {rewrite.rationale}".strip(), edits=[edit],
                         cost_usd=rewrite.cost_usd)
        if call is not None:
            cost = job.ledger.cost(call, rewrite.cost_usd, rewrite.model)
            ref.cost_usd, ref.latency_ms, ref.routing = cost, call.served.latency_ms, call.served.routing()
            with job.ledger.record(call, cost) as s:
                s.add(ref)
        else:
            with job.ledger.transaction() as s:
                s.add(ref)
        job.refinements[0] = ref
        return ref.new_prompt

    # ---- compression ---------------------------------------------------------------------------
    async def fitted(self, it: Iteration) -> dict[str, str]:
        """The text each provider is sent for ``it`` where it differs from ``it.prompt_text``."""
        text = it.prompt_text
        over = [w for w in self.windows if w.fit(text).over_window]  # over a hard maximum too (a refinement may outgrow it)
        if not over:
            return {}
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        stored = (it.routing or {}).get("compressed") or {}
        if stored.get("from_sha256") == sha:
            return {p: str(v["text"]) for p, v in stored.get("versions", {}).items()}
        anchors = self.anchors(text)
        by_window: dict[tuple[int, int, str], Compression] = {}
        versions: dict[str, dict[str, Any]] = {}
        for w in over:
            key = (min(w.chars, w.max_chars), w.tokens, w.tokenizer)
            if key not in by_window:
                by_window[key] = await self._compress(it, w, text, anchors)
            c = by_window[key]
            versions[w.provider] = {**c.report(), "text": c.text, "window": w.fit(c.text).describe()}
            if not c.window_hit:
                log.warning("%s: even its critical elements do not fit %s's window (%s); sent with every element kept",
                            self.job.prompt.key, w.provider, w.fit(c.text).describe())
        it.routing = {**(it.routing or {}), "compressed": {"from_sha256": sha, "chars": len(text), "versions": versions}}
        with self.job.ledger.transaction() as s:
            update_row(s, it, "routing")
        return {p: str(v["text"]) for p, v in versions.items()}

    async def _compress(self, it: Iteration, window: Window, text: str, anchors: list[Anchor]) -> Compression:
        job = self.job
        chain = _chain(self.settings, "compressor", "compressors")
        attempts: tuple[dict[str, str], ...] = ()
        if chain is not None:
            try:
                call = await job.ledger.call(chain, "compress", it.number, lambda r: compress_with(_chat(r), text, window, anchors),
                                             iteration_id=it.id, step=f"compress-{window.provider}")
            except ProviderError as e:
                attempts = ({"service": "chain", "outcome": e.kind, "why": str(e)[:300]},)
                log.info("%s: no chat service compressed the prompt for %s (%s); the offline compressor does",
                         job.prompt.key, window.provider, e)
            else:
                job.ledger.record_call(call, job.ledger.cost(call, call.value.cost_usd, call.value.model))
                return call.value
        offline = compress_offline(text, anchors, lambda t: not window.fit(t).over_window)
        return Compression(text, offline.text, "offline", len(anchors), missing=offline.missing,
                           window_hit=offline.window_hit, cost_usd=0.0, attempts=attempts)
