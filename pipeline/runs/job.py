"""One prompt's way through a run: generate → judge → refine → generate → judge …

Every step commits its result before the next begins, and every step first looks in the
database for its own result, so a resumed prompt skips what is finished and redoes only what
was half-done (an iteration row still ``running``, or one whose image file is missing).
Between steps the job checks whether the run is stopping; if so it leaves the prompt
``pending`` for a later resume.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from pipeline import prices
from pipeline.components import (
    Check,
    Component,
    Decomposition,
    Element,
    EvaluationRequest,
    GeneratedImage,
    GenerationRequest,
    ImageProvider,
    Issue,
    Judge,
    Judgement,
    RefinedPrompt,
    RefinementRequest,
    Refiner,
)
from pipeline.config import Settings
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.files import atomic_write_bytes
from pipeline.images import ImageInfo, Thumb, inspect_image, make_thumbnail
from pipeline.prompts.promptset import PromptSpec, compose_prompt, parse_size
from pipeline.resilience.budget import Budget, BudgetReached
from pipeline.resilience.routing import Attempt, ChainFailed, Served, ServiceChain
from pipeline.runs import scoring
from pipeline.runs.records import RunConfig, default_seed, iterations_with_evaluations
from pipeline.store import sidecars
from pipeline.store.db import session
from pipeline.store.models import Evaluation, Iteration, Prompt, PromptElement, ProviderCall, Refinement, Run, RunItem, Thumbnail, utcnow

log = logging.getLogger("pipeline.runs.job")
ITEM_FIELDS = ("status", "error_kind", "error_message", "started_at", "finished_at", "cost_usd", "best_score", "final_iteration")
ITERATION_FIELDS = tuple(c.name for c in Iteration.__table__.columns if c.name not in ("id", "run_item_id", "number"))


@dataclass
class RunContext:
    """What every prompt job of one run shares."""

    engine: Engine
    settings: Settings
    run: Run
    config: RunConfig
    providers: ServiceChain[ImageProvider]
    judges: ServiceChain[Judge]
    refiners: ServiceChain[Refiner]
    output_dir: Path
    stopping: Callable[[], bool]
    budget: Budget
    on_step: Callable[[], None] = lambda: None
    on_budget: Callable[[str], None] = lambda reason: None  # the budget is spent: the run pauses

    @property
    def template(self) -> str:
        return str(self.settings.section("prompt").get("template", "{prompt}"))

    @property
    def faithfulness_weight(self) -> float:
        return float(self.settings.section("scoring").get("faithfulness_weight", scoring.DEFAULT_FAITHFULNESS_WEIGHT))


class Stopped(Exception):
    """The run is stopping; this prompt goes back to pending, its finished steps kept."""


class StepFailed(Exception):
    def __init__(self, status: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def step_key(run_id: int, item_id: int, number: int, operation: str) -> str:
    return f"run{run_id}/item{item_id}/it{number}/{operation}"


def _judgement_from_row(ev: Evaluation) -> Judgement:
    return Judgement(
        criteria=dict(ev.criteria),
        checks=[Check(**c) for c in ev.checks],
        issues=[Issue(**i) for i in ev.issues],
        model=ev.model, raw_response=ev.raw_response, cost_usd=ev.cost_usd,
    )


# The hot path writes rows with statements built once and run with bound parameters on the
# session's connection: no ORM unit of work, no statement rebuilt per row. (Measured: this and
# the in-memory state below halve the database's share of the per-image overhead.)
@functools.cache
def _insert_statement(table: Any, returning: bool) -> Any:
    stmt = insert(table)
    return stmt.returning(table.c.id) if returning else stmt


@functools.cache
def _update_statement(table: Any, fields: tuple[str, ...]) -> Any:
    return update(table).where(table.c.id == bindparam("row_id")).values({f: bindparam(f"new_{f}") for f in fields})


def _insert(s: Any, obj: Any) -> None:
    """INSERT ``obj``'s row and set its id."""
    table = type(obj).__table__
    values = {c.name: getattr(obj, c.name) for c in table.columns if c.name != "id"}
    obj.id = s.connection().execute(_insert_statement(table, True), values).scalar_one()


def _update(s: Any, obj: Any, *fields: str) -> None:
    table = type(obj).__table__
    s.connection().execute(_update_statement(table, fields), {"row_id": obj.id, **{f"new_{f}": getattr(obj, f) for f in fields}})


class PromptJob:
    def __init__(self, ctx: RunContext, item_id: int) -> None:
        self.ctx = ctx
        self.item_id = item_id
        with session(ctx.engine) as s:
            self.item = s.get(RunItem, item_id)
            self.prompt = s.get(Prompt, self.item.prompt_id)
            # This job is the only writer of its prompt's rows, so their state is read once here
            # and kept current in memory as each step commits.
            rows = iterations_with_evaluations(s, item_id)
            refinements = s.exec(select(Refinement).where(Refinement.run_item_id == item_id)).all()
            self.stored_elements = s.exec(select(PromptElement).where(PromptElement.prompt_id == self.prompt.id)
                                          .order_by(PromptElement.number)).all()
        self.iterations: dict[int, Iteration] = {it.number: it for it, _ in rows}
        self.evaluations: dict[int, Evaluation] = {it.number: ev for it, ev in rows if ev is not None}
        self.refinements: dict[int, Refinement] = {r.from_iteration: r for r in refinements}
        p = self.prompt
        self.spec = PromptSpec(id=p.key, prompt=p.prompt, title=p.title, scene=p.scene, mood=p.mood)
        self.original_text = compose_prompt(self.spec, ctx.template)
        size = parse_size(p.size or str(ctx.settings.section("prompt").get("default_size", "1024x1024")))
        self.width, self.height = size if isinstance(size, tuple) else (1024, 1024)
        self.seed = p.seed if p.seed is not None else default_seed(p.key)
        self.folder = ctx.output_dir / "results" / p.key
        self._item_dirty = False
        self._fresh_image: tuple[int, bytes] | None = None
        self._last_failed = ""  # the service whose attempt failed last, for messages

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> str:
        """Take the prompt as far as it goes; return its final status (``pending`` if stopped)."""
        ctx = self.ctx
        self._set_item(status="running", started=True, defer=True)
        try:
            self.mirror_sidecars()
            elements = await self.elements()
            text = self.original_text
            for number in range(1, ctx.config.iterations + 1):
                it = await self.generated(number, text)
                ev = await self.evaluated(it, elements)
                if ctx.config.target_score is not None and ev.overall_score >= ctx.config.target_score:
                    break
                if number == ctx.config.iterations:
                    break
                refinement = await self.refined(it, ev)
                if refinement.new_prompt.strip() == text.strip():
                    log.info("%s: refiner left the prompt unchanged; stopping at iteration %d", self.prompt.key, number)
                    break
                text = refinement.new_prompt
        except (Stopped, BudgetReached) as e:
            if isinstance(e, BudgetReached):
                ctx.on_budget(str(e))
            self._set_item(status="pending")
            self._write_summary()  # what is done so far; rewritten when the prompt finishes
            return "pending"
        except StepFailed as e:
            self._set_item(status=e.status, error=(e.kind, e.message), finished=True)
            return e.status
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug or an unexpected failure: record it, keep the run going
            log.exception("%s: unexpected error", self.prompt.key)
            self._set_item(status="failed", error=("internal", f"{type(e).__name__}: {e}"), finished=True)
            return "failed"
        self._set_item(status="completed", error=("", ""), finished=True)
        return "completed"

    def _check_stop(self) -> None:
        if self.ctx.stopping():
            raise Stopped()

    # ---- calls along a chain ---------------------------------------------------------------
    async def _call(self, chain: ServiceChain[Any], operation: str, number: int, send: Callable[[Any], Any], *,
                    estimate: Callable[[Any], float | None], iteration_id: int | None = None, step: str = "") -> Served[Any, Any]:
        """One budgeted call along ``chain``: every failed attempt logged as it happens; the
        caller logs the successful one with its cost, then settles ``served.reserved_usd``.
        Later iterations go first when a service is busy, so started prompts finish first."""
        key = step_key(self.ctx.run.id, self.item_id, number, step or operation)
        budget = self.ctx.budget

        async def attempt(component: Any) -> Any:
            reserved = estimate(component) or 0.0
            budget.reserve(reserved, f"{operation} on {component.name}")
            try:
                return await send(component), reserved
            except BaseException:
                budget.release(reserved)
                raise

        def on_attempt(a: Attempt) -> None:
            started = utcnow() - timedelta(milliseconds=a.latency_ms)
            with session(self.ctx.engine) as s:
                self._log_call(s, self._call_row(a.component, operation, key, started, a.latency_ms, a.outcome,
                                                 error=a.error, iteration_id=iteration_id, attempt=a.number))
                s.commit()
            self._last_failed = a.component.name
            log.warning("%s: %s %s attempt %d %s: %s", self.prompt.key, a.component.name, operation, a.number, a.outcome, a.error)

        served = await chain.call(attempt, on_attempt, priority=-number)
        served.value, served.reserved_usd = served.value
        served.step_key = key
        return served

    def _ok_row(self, served: Served[Any, Any], operation: str, cost: float | None, *, iteration_id: int | None = None,
                http_status: int | None = None, model: str = "") -> dict[str, Any]:
        started = utcnow() - timedelta(milliseconds=served.latency_ms)
        return self._call_row(served.component, operation, served.step_key, started, served.latency_ms, "ok", cost=cost,
                              http_status=http_status, iteration_id=iteration_id, attempt=served.attempts, model=model)

    @staticmethod
    def _failure(role: str, e: ProviderError, last: str) -> str:
        return str(e) if isinstance(e, ChainFailed) else f"{role} {last} failed: {e}".lstrip()

    # ---- elements (once per prompt) ----------------------------------------------------------
    async def elements(self) -> tuple[Element, ...]:
        rows = list(self.stored_elements)
        if not rows:
            made, source = await self._decompose()
            rows = [PromptElement(prompt_id=self.prompt.id, number=e.number, category=e.category, question=e.question,
                                  tuple_text=e.tuple_text, parent_numbers=list(e.parent_numbers), critical=e.critical,
                                  source=source) for e in made.elements]
            try:
                with session(self.ctx.engine) as s:
                    s.add_all(rows)
                    self._commit(s)
            except IntegrityError:  # another run of the same prompt stored them first: use those
                with session(self.ctx.engine) as s:
                    rows = list(s.exec(select(PromptElement).where(PromptElement.prompt_id == self.prompt.id)
                                       .order_by(PromptElement.number)))
        return tuple(Element(number=r.number, category=r.category, question=r.question, tuple_text=r.tuple_text,
                             parent_numbers=tuple(r.parent_numbers), critical=r.critical) for r in rows)

    async def _decompose(self) -> tuple[Decomposition, str]:
        """Stage A, logged like any call when the judge asks a service (failure ends the prompt as failed)."""
        judges = self.ctx.judges
        if not judges.primary.remote_decompose:
            return await judges.primary.decompose(self.original_text), judges.primary.name
        self._check_stop()
        try:
            served = await self._call(judges, "decompose", 0, lambda j: j.decompose(self.original_text),
                                      estimate=lambda j: prices.table_cost(j.settings, j.model))
        except ProviderError as e:
            status = "blocked" if isinstance(e, ContentBlocked) else "failed"
            raise StepFailed(status, e.kind, f"the prompt's elements could not be listed: {self._failure('judge', e, self._last_failed)}") from None
        made: Decomposition = served.value
        judge = served.component
        cost = made.cost_usd if made.cost_usd is not None else prices.table_cost(judge.settings, made.model or judge.model)
        with session(self.ctx.engine) as s:
            self._log_call(s, self._ok_row(served, "decompose", cost))
            self._add_cost(cost)
            self._commit(s)
        self.ctx.budget.settle(served.reserved_usd, cost)
        return made, judge.name

    # ---- generate ----------------------------------------------------------------------------
    async def generated(self, number: int, text: str) -> Iteration:
        ctx = self.ctx
        it = self.iterations.get(number)
        if it is not None and it.status == "ok" and self._image_intact(it):
            return it
        self._check_stop()
        rewrites: list[dict[str, Any]] = []
        if it is not None:  # a rewrite made after a block, before a crash, is kept: it was paid for
            earlier = list((it.routing or {}).get("rewrites", []))
            if earlier and earlier[0].get("from") == text:
                rewrites, text = earlier, earlier[-1]["to"]
        primary = ctx.providers.primary
        self.evaluations.pop(number, None)  # a regenerated image needs a fresh judgement
        new = it is None
        if it is None:
            it = Iteration(run_item_id=self.item_id, number=number, prompt_text=text)
        it.prompt_text, it.negative_prompt = text, self.prompt.negative_prompt
        it.provider, it.model, it.seed = primary.name, primary.model, self.seed
        it.parameters = {"width": self.width, "height": self.height}
        it.status, it.error_kind, it.error_message = "running", "", ""
        it.started_at, it.finished_at, it.routing = utcnow(), None, {"rewrites": rewrites} if rewrites else {}
        with session(ctx.engine) as s:
            if new:
                _insert(s, it)
            else:  # a half-done or failed attempt: the same row is reused, and any old judgement dropped
                for table in (Evaluation.__table__, Thumbnail.__table__):
                    s.exec(table.delete().where(table.c.iteration_id == it.id))  # type: ignore[call-overload]
                _update(s, it, *ITERATION_FIELDS)
            self._commit(s)
        self.iterations[number] = it
        self._fresh_image = None
        max_pixels = int(ctx.settings.section("images").get("max_pixels", 40_000_000))
        while True:
            request = GenerationRequest(prompt=it.prompt_text, width=self.width, height=self.height, seed=self.seed,
                                        negative_prompt=self.prompt.negative_prompt, prompt_id=self.prompt.key)

            async def send(provider: ImageProvider, request: GenerationRequest = request) -> tuple[GeneratedImage, ImageInfo]:
                result = await provider.generate(request)
                return result, inspect_image(result.data, claimed_mime=result.mime_type, max_pixels=max_pixels)

            try:
                served = await self._call(ctx.providers, "generate", number, send, iteration_id=it.id,
                                          estimate=lambda p: prices.table_cost(p.settings, p.model, self.width, self.height))
            except ContentBlocked as e:
                if len(rewrites) < ctx.config.block_rewrites:
                    rewrites.append(await self._rewrite_blocked(it, e, len(rewrites) + 1))
                    it.prompt_text, it.routing = rewrites[-1]["to"], {"rewrites": rewrites}
                    with session(ctx.engine) as s:
                        _update(s, it, "prompt_text", "routing")
                        self._commit(s)
                    continue
                self._generation_failed(it, "blocked", e)
            except ProviderError as e:
                self._generation_failed(it, "failed", e)
            break
        result, info = served.value
        provider = served.component
        cost = result.cost_usd
        if cost is None:
            cost = prices.table_cost(provider.settings, result.model or provider.model, info.width, info.height)
        image_path = self.folder / f"iteration_{number}.{info.extension}"
        images_cfg = ctx.settings.section("images")

        def store() -> Thumb:
            atomic_write_bytes(image_path, result.data)
            return make_thumbnail(result.data, side=int(images_cfg.get("thumbnail_side", 320)),
                                  fmt=str(images_cfg.get("thumbnail_format", "JPEG")),
                                  quality=int(images_cfg.get("thumbnail_quality", 82)), sha256=info.sha256)

        thumb = await asyncio.to_thread(store)
        self._fresh_image = (number, result.data)  # the judge needs these bytes next: no need to read them back
        it.status, it.provider, it.model = "ok", provider.name, result.model or provider.model
        it.image_path = str(image_path.relative_to(ctx.output_dir))
        it.mime_type, it.width, it.height = info.mime_type, info.width, info.height
        it.sha256, it.byte_size = info.sha256, info.byte_size
        it.latency_ms, it.cost_usd, it.finished_at = served.latency_ms, cost, utcnow()
        it.routing = {**served.routing(), **({"rewrites": rewrites} if rewrites else {})}
        with session(ctx.engine) as s:
            _update(s, it, *ITERATION_FIELDS)
            s.connection().execute(_insert_statement(Thumbnail.__table__, False), {
                "iteration_id": it.id, "mime_type": thumb.mime_type, "width": thumb.width, "height": thumb.height, "data": thumb.data})
            self._log_call(s, self._ok_row(served, "generate", cost, http_status=result.http_status, iteration_id=it.id,
                                           model=it.model))
            self._add_cost(cost)
            self._commit(s)
        ctx.budget.settle(served.reserved_usd, cost)
        self._write_results(it)
        ctx.on_step()
        return it

    def _generation_failed(self, it: Iteration, status: str, e: ProviderError) -> None:
        """Record the iteration as failed or blocked, and end the prompt."""
        it.status, it.error_kind, it.error_message = status, e.kind, str(e)
        it.finished_at = utcnow()
        skipped = getattr(e, "skipped", [])
        it.routing = {**(it.routing or {}), "served_by": "", "skipped": [s.as_dict() for s in skipped]}
        with session(self.ctx.engine) as s:
            _update(s, it, *ITERATION_FIELDS)
            self._commit(s)
        self._write_results(it)
        what = f"{self._last_failed} blocked the prompt: {e}" if status == "blocked" else self._failure("", e, self._last_failed)
        raise StepFailed(status, e.kind, f"iteration {it.number}: {what}")

    async def _rewrite_blocked(self, it: Iteration, blocked: ContentBlocked, count: int) -> dict[str, Any]:
        """Ask the refiner to rewrite a blocked prompt so it complies (``block_rewrites`` times at most)."""
        ctx = self.ctx
        by = self._last_failed
        hint = str(ctx.settings.section("run").get("block_rewrite_hint", "describe it in a non-graphic way suitable for all audiences"))
        judgement = Judgement(criteria={}, issues=[Issue(kind="content_policy", description=f"{by} refused it: {blocked}",
                                                         suggestion=hint, severity=1.0)])
        request = RefinementRequest(original_prompt=self.original_text, current_prompt=it.prompt_text, judgement=judgement,
                                    failed_checks=(), history=(), purpose="comply")
        try:
            served = await self._call(ctx.refiners, "refine", it.number, lambda r: self._checked(r.refine(request)),
                                      estimate=lambda r: prices.table_cost(r.settings, r.model), iteration_id=it.id, step=f"rewrite{count}")
        except ProviderError as e:
            self._generation_failed(it, "blocked", ContentBlocked(f"{blocked}; rewriting it to comply failed: {e}", http_status=blocked.http_status))
        refined: RefinedPrompt = served.value
        if refined.prompt.strip() == it.prompt_text.strip():
            self._generation_failed(it, "blocked", ContentBlocked(f"{blocked}; the refiner could not rewrite it", http_status=blocked.http_status))
        refiner = served.component
        cost = refined.cost_usd if refined.cost_usd is not None else prices.table_cost(refiner.settings, refined.model)
        with session(ctx.engine) as s:
            self._log_call(s, self._ok_row(served, "refine", cost, iteration_id=it.id))
            self._add_cost(cost)
            self._commit(s)
        ctx.budget.settle(served.reserved_usd, cost)
        log.info("%s: iteration %d blocked by %s; rewritten by %s to comply", self.prompt.key, it.number, by, refiner.name)
        return {"from": it.prompt_text, "to": refined.prompt, "rationale": refined.rationale, "blocked_by": by, "refiner": refiner.name}

    async def _checked(self, refining: Any) -> RefinedPrompt:
        """A refiner's answer, refused when empty or over the prompt length limit."""
        refined: RefinedPrompt = await refining
        max_chars = int(self.ctx.settings.section("prompt").get("max_chars", 10_000))
        if not refined.prompt.strip():
            raise ProviderError("the refiner returned an empty prompt", kind="malformed")
        if len(refined.prompt) > max_chars:
            raise ProviderError(f"the refined prompt is {len(refined.prompt):,} characters, over the limit of {max_chars:,}", kind="malformed")
        return refined

    def _image_intact(self, it: Iteration) -> bool:
        """A finished generation counts only while its file is there with the recorded hash."""
        path = self.ctx.output_dir / it.image_path
        try:
            intact = hashlib.sha256(path.read_bytes()).hexdigest() == it.sha256
        except OSError:
            intact = False
        if not intact:
            log.warning("%s: iteration %d image missing or changed at %s; generating it again", self.prompt.key, it.number, path)
        return intact

    # ---- judge -------------------------------------------------------------------------------
    async def evaluated(self, it: Iteration, elements: tuple[Element, ...]) -> Evaluation:
        ctx = self.ctx
        if it.number in self.evaluations:
            return self.evaluations[it.number]
        self._check_stop()
        fresh = self._fresh_image
        data = fresh[1] if fresh and fresh[0] == it.number else (ctx.output_dir / it.image_path).read_bytes()
        request = EvaluationRequest(original_prompt=self.original_text, sent_prompt=it.prompt_text, elements=elements,
                                    image=data, mime_type=it.mime_type, requested_width=self.width, requested_height=self.height)
        try:
            served = await self._call(ctx.judges, "evaluate", it.number, lambda j: j.evaluate(request), iteration_id=it.id,
                                      estimate=lambda j: prices.table_cost(j.settings, j.model))
        except ProviderError as e:
            raise StepFailed("failed", e.kind, f"iteration {it.number}: {self._failure('judge', e, self._last_failed)}") from None
        judgement: Judgement = served.value
        judge = served.component
        cost = judgement.cost_usd if judgement.cost_usd is not None else prices.table_cost(judge.settings, judgement.model)
        score = scoring.overall(judgement, elements, ctx.faithfulness_weight)
        top = judgement.top_issue
        with session(ctx.engine) as s:
            ev = Evaluation(
                iteration_id=it.id, judge=judge.name, model=judgement.model or judge.model, overall_score=score,
                criteria=judgement.criteria, checks=[c.__dict__ for c in judgement.checks],
                issues=[i.__dict__ for i in sorted(judgement.issues, key=lambda i: -i.severity)],
                top_suggestion=(top.suggestion or top.description) if top else "",
                raw_response=judgement.raw_response, latency_ms=served.latency_ms, cost_usd=cost, routing=served.routing(),
            )
            _insert(s, ev)
            self._log_call(s, self._ok_row(served, "evaluate", cost, iteration_id=it.id))
            self._add_cost(cost)
            best = max(self.evaluations.values(), key=lambda e: e.overall_score, default=None)
            if best is None or score >= best.overall_score:
                self.item.best_score, self.item.final_iteration = score, it.number
                self._item_dirty = True
            self._commit(s)
        ctx.budget.settle(served.reserved_usd, cost)
        self.evaluations[it.number] = ev
        sidecars.write_iteration_evaluation(self.folder, sidecars.iteration_evaluation(self.prompt, it, ev))
        ctx.on_step()
        return ev

    # ---- refine ------------------------------------------------------------------------------
    async def refined(self, it: Iteration, ev: Evaluation) -> Refinement:
        ctx = self.ctx
        if it.number in self.refinements:
            return self.refinements[it.number]
        self._check_stop()
        history = [(self.iterations[n].prompt_text, e.overall_score) for n, e in sorted(self.evaluations.items()) if n <= it.number]
        judgement = _judgement_from_row(ev)
        request = RefinementRequest(
            original_prompt=self.original_text, current_prompt=it.prompt_text, judgement=judgement,
            failed_checks=tuple(c for c in judgement.checks if c.answer != "yes"),
            history=tuple((p, score) for p, score in history),
        )
        try:
            served = await self._call(ctx.refiners, "refine", it.number, lambda r: self._checked(r.refine(request)),
                                      estimate=lambda r: prices.table_cost(r.settings, r.model), iteration_id=it.id)
        except ProviderError as e:
            raise StepFailed("failed", e.kind, f"iteration {it.number}: {self._failure('refiner', e, self._last_failed)}") from None
        refined: RefinedPrompt = served.value
        refiner = served.component
        cost = refined.cost_usd if refined.cost_usd is not None else prices.table_cost(refiner.settings, refined.model)
        with session(ctx.engine) as s:
            ref = Refinement(run_item_id=self.item_id, from_iteration=it.number, new_prompt=refined.prompt,
                             refiner=refiner.name, model=refined.model or refiner.model, rationale=refined.rationale,
                             edits=refined.edits, latency_ms=served.latency_ms, cost_usd=cost, routing=served.routing())
            _insert(s, ref)
            self._log_call(s, self._ok_row(served, "refine", cost, iteration_id=it.id))
            self._add_cost(cost)
            self._commit(s)
        ctx.budget.settle(served.reserved_usd, cost)
        self.refinements[it.number] = ref
        ctx.on_step()
        return ref

    # ---- records -------------------------------------------------------------------------------
    def _call_row(self, component: Component, operation: str, key: str, started: Any, latency: float, outcome: str, *,
                  cost: float | None = None, http_status: int | None = None, error: ProviderError | None = None,
                  iteration_id: int | None = None, attempt: int = 1, model: str = "") -> dict[str, Any]:
        """The values of one call-log row (append-only: written by :meth:`_log_call`, no object needed)."""
        return dict(
            run_id=self.ctx.run.id, iteration_id=iteration_id, step_key=key, provider=component.name,
            model=model or component.model, operation=operation, started_at=started, latency_ms=latency, outcome=outcome,
            http_status=error.http_status if error else http_status, error_kind=error.kind if error else "",
            error_message=str(error)[:2000] if error else "", attempt=attempt, cost_usd=cost,
        )

    @staticmethod
    def _log_call(s: Any, values: dict[str, Any]) -> None:
        s.connection().execute(_insert_statement(ProviderCall.__table__, False), values)

    def _add_cost(self, cost: float | None) -> None:
        if cost:
            self.item.cost_usd += cost
            self._item_dirty = True

    def _set_item(self, *, status: str, error: tuple[str, str] | None = None, started: bool = False,
                  finished: bool = False, defer: bool = False) -> None:
        """Record the prompt's status; ``defer`` lets the next step's commit carry it (one commit fewer)."""
        item = self.item
        item.status = status
        if error is not None:
            item.error_kind, item.error_message = error
        if started and item.started_at is None:
            item.started_at = utcnow()
        if finished:
            item.finished_at = utcnow()
        self._item_dirty = True
        if not defer:
            with session(self.ctx.engine) as s:
                self._commit(s)
        if finished:
            self._write_summary()

    def _commit(self, s: Any) -> None:
        """Commit ``s`` together with the prompt's own row (status, cost, best) if it changed.

        The job is the only writer of that row, so one UPDATE of its in-memory copy per commit
        keeps it exact, and the step's result and the prompt's totals land in one transaction.
        """
        if self._item_dirty:
            _update(s, self.item, *ITEM_FIELDS)
            self._item_dirty = False
        s.commit()

    def _write_results(self, it: Iteration) -> None:
        ref = self.refinements.get(it.number - 1)
        sidecars.write_iteration_results(self.folder, sidecars.iteration_results(self.ctx.run, self.prompt, it, ref))

    def _write_summary(self) -> None:
        rows = [(it, self.evaluations.get(n)) for n, it in sorted(self.iterations.items())]
        sidecars.write_summary(self.folder, sidecars.summary(self.ctx.run, self.prompt, self.item, rows))

    def mirror_sidecars(self) -> None:
        """Rewrite every sidecar of this prompt from its records (after a crash, some may be missing)."""
        if not self.iterations:
            return
        for number, it in sorted(self.iterations.items()):
            self._write_results(it)
            if number in self.evaluations:
                sidecars.write_iteration_evaluation(self.folder, sidecars.iteration_evaluation(self.prompt, it, self.evaluations[number]))
        self._write_summary()
