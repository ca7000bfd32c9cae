"""One prompt's way through a run: generate → judge → refine → generate → judge …

Every step commits its result before the next begins, and every step first looks in the
database for its own result, so a resumed prompt skips what is finished and redoes only what
was half-done (an iteration row still ``running``, or one whose image file is missing).
Between steps the job checks whether the run is stopping; if so it leaves the prompt
``pending`` for a later resume.

The bookkeeping of each call (budget, call log, cost, commit) is the :class:`StepLedger`'s;
this module says what the steps are and what each one stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, NoResultFound
from sqlmodel import Session, col, select

from pipeline.components import (
    Check,
    Decomposition,
    Element,
    EvaluationRequest,
    GeneratedImage,
    GenerationRequest,
    ImageProvider,
    Issue,
    Judge,
    Judgement,
    ReferenceImage,
    RefinedPrompt,
    RefinementRequest,
    Refiner,
    Submission,
)
from pipeline.config import Settings
from pipeline.errors import BudgetReached, ContentBlocked, DiskFull, ObjectMissing, ProviderError, StepFailed, Stopped, StorageError
from pipeline.images import ImageInfo, Thumb, inspect_image, make_thumbnail
from pipeline.prompts.characters import Character
from pipeline.prompts.promptset import AUTO_SIZE, PromptSpec, compose_prompt, parse_size
from pipeline.redaction import redact
from pipeline.resilience.budget import Budget
from pipeline.resilience.routing import ServiceChain
from pipeline.runs import scoring, shots, subjects
from pipeline.runs.ledger import Call, StepLedger, table_price
from pipeline.runs.prompt_steps import PromptSteps
from pipeline.runs.records import RunConfig, default_seed, iterations_with_evaluations
from pipeline.runs.servable import component_capabilities, refusal
from pipeline.store import sidecars
from pipeline.store.db import session
from pipeline.store.models import (
    Evaluation,
    Iteration,
    Prompt,
    PromptElement,
    PromptReference,
    Refinement,
    Run,
    RunItem,
    Thumbnail,
    utcnow,
)
from pipeline.store.objects import run_store
from pipeline.store.references import load_reference
from pipeline.store.statements import append, append_all, delete_where, insert_row, table_of, update_row

log = logging.getLogger("pipeline.runs.job")
META_TEXT_CHARS, META_DEPTH, META_ITEMS = 1000, 6, 50  # how much of a service's own metadata an iteration keeps
ITERATION_FIELDS = tuple(c.name for c in table_of(Iteration).columns if c.name not in ("id", "run_item_id", "number"))


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
    stop_cause: Callable[[], str] = lambda: "interrupted"  # why the run is stopping: cancelled | paused | interrupted
    on_budget: Callable[[str], None] = lambda reason: None  # the budget is spent: the run pauses


def stored_elements(s: Session, prompt_id: int | None) -> list[PromptElement]:
    return list(s.exec(select(PromptElement).where(PromptElement.prompt_id == prompt_id).order_by(col(PromptElement.number))))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _compact(value: Any, depth: int = 0) -> Any:
    """A service's metadata fit to keep: JSON values only, long strings cut, secrets redacted,
    nesting and lists bounded (a data: URI or a workflow graph is not metadata)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        text = redact(value)
        return text if len(text) <= META_TEXT_CHARS else f"{text[:META_TEXT_CHARS]}… ({len(text):,} characters)"
    if depth >= META_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {str(k): _compact(v, depth + 1) for k, v in list(value.items())[:META_ITEMS]}
    if isinstance(value, (list, tuple)):
        return [_compact(v, depth + 1) for v in list(value)[:META_ITEMS]]
    return _compact(str(value), depth)


def _judgement_from_row(ev: Evaluation) -> Judgement:
    return Judgement(
        criteria=dict(ev.criteria),
        checks=[Check(**c) for c in ev.checks],
        issues=[Issue(**i) for i in ev.issues],
        model=ev.model, raw_response=ev.raw_response, cost_usd=ev.cost_usd,
    )


class PromptJob:
    def __init__(self, ctx: RunContext, item_id: int) -> None:
        self.ctx = ctx
        self.item_id = item_id
        with session(ctx.engine) as s:
            found = s.exec(select(RunItem, Prompt).join(Prompt, col(Prompt.id) == RunItem.prompt_id)
                           .where(RunItem.id == item_id)).first()
            if found is None:
                raise NoResultFound(f"run item {item_id} (or its prompt) does not exist")
            self.item, self.prompt = found
            # This job is the only writer of its prompt's rows, so their state is read once here
            # and kept current in memory as each step commits. A prompt never started has none:
            # its first commit carries its start time with (or before) its first row.
            rows: list[tuple[Iteration, Evaluation | None]] = []
            refinements: list[Refinement] = []
            if self.item.started_at is not None:
                rows = iterations_with_evaluations(s, item_id)
                refinements = list(s.exec(select(Refinement).where(Refinement.run_item_id == item_id)).all())
            self.stored_elements = stored_elements(s, self.prompt.id)
        self.iterations: dict[int, Iteration] = {it.number: it for it, _ in rows}
        self.evaluations: dict[int, Evaluation] = {it.number: ev for it, ev in rows if ev is not None}
        self.refinements: dict[int, Refinement] = {r.from_iteration: r for r in refinements}
        p = self.prompt
        self.ledger = StepLedger(ctx.engine, ctx.run.id or 0, self.item, ctx.budget, p.key)
        # The prompt set's own template, style and characters come first; then a project's template and
        # style line (copied into the run's config at launch); then the configured template.
        self.spec = PromptSpec(id=p.key, prompt=p.prompt, title=p.title, scene=p.scene, mood=p.mood,
                               negative_prompt=p.negative_prompt, metadata=dict(p.meta or {}),
                               style=p.style or str(ctx.run.config.get("style") or "").strip(), template=p.template,
                               characters=tuple(Character(id=str(c.get("id", "")), name=str(c.get("name", "")),
                                                          traits=str(c.get("traits", ""))) for c in p.characters or []))
        self.original_text = compose_prompt(self.spec, str(ctx.run.config.get("template") or ctx.settings.prompt.template))
        default_size = ctx.settings.prompt.default_size
        self.size = p.size or default_size
        self.auto_size = self.size.strip().lower() == AUTO_SIZE  # the service chooses; width and height are a fallback
        size = parse_size(default_size if self.auto_size else self.size)
        self.width, self.height = size if isinstance(size, tuple) else (1024, 1024)
        self.references: tuple[ReferenceImage, ...] = ()  # read when the job runs (a missing one fails this prompt only)
        self.reference_rows: tuple[PromptReference, ...] = ()  # their rows, read with them
        self.plan = shots.Plan()  # images per step, grid mode (read when the job runs: a bad field fails this prompt only)
        self.seed = p.seed if p.seed is not None else default_seed(p.key)
        self.folder = ctx.output_dir / "results" / p.key
        self.store = run_store(ctx.settings, ctx.run, ctx.output_dir)  # the output folder, or the run's place in a bucket
        self.sidecar_folder = f"results/{p.key}"  # the sidecars' place in the store
        self._fresh_image: tuple[int, bytes] | None = None

    def _references(self) -> tuple[ReferenceImage, ...]:
        """The prompt's reference images (its own and its characters'), read back from the data folder."""
        with session(self.ctx.engine) as s:
            rows = s.exec(select(PromptReference).where(PromptReference.prompt_id == self.prompt.id)
                          .order_by(col(PromptReference.position))).all()
        self.reference_rows = tuple(rows)  # the subjects' elements are read from these too
        try:
            return tuple(load_reference(self.ctx.settings.data_dir, row) for row in rows)
        except StorageError as e:
            raise StepFailed("failed", "reference", str(e)) from None

    def _request_extras(self) -> dict[str, Any]:
        """What an iteration records of the request beyond its size: "auto", and the images sent."""
        extras: dict[str, Any] = {"size": AUTO_SIZE} if self.auto_size else {}
        if self.references:
            extras["references"] = [{"name": r.name, "role": r.role, "sha256": hashlib.sha256(r.data).hexdigest()}
                                    for r in self.references]
        return extras

    def _refusal(self, provider: ImageProvider) -> str:
        """Why ``provider`` cannot serve this prompt (its references, size "auto"), from its capabilities."""
        if not self.references and not self.auto_size:
            return ""
        return refusal(component_capabilities(provider), [r.role for r in self.references], AUTO_SIZE if self.auto_size else None)

    # ---- the loop ------------------------------------------------------------------------
    async def run(self) -> str:
        """Take the prompt as far as it goes; return its final status (``pending`` if stopped)."""
        self._set_item(status="running", reason="", started=True, defer=True)
        try:
            await self._sidecars(self.mirror_sidecars)
            self.references = await asyncio.to_thread(self._references)
            self.plan = shots.plan_for(dict(self.prompt.meta or {}), self.ctx.config.grid, self.ctx.settings)
            reason = await self._iterate(await self.elements())
        except Stopped:
            self._leave_pending(self.ctx.stop_cause())
            return "pending"
        except (BudgetReached, DiskFull) as e:  # the budget is spent, or the disk is full: the run pauses (nothing failed)
            self.ctx.on_budget(str(e))
            self._leave_pending("budget" if isinstance(e, BudgetReached) else "paused")
            return "pending"
        except StepFailed as e:
            self._set_item(status=e.status, reason=e.status, error=(e.kind, e.message), finished=True)
            return e.status
        except (asyncio.CancelledError, StorageError):  # a damaged database, a read-only folder: the run ends with it
            raise
        except Exception as e:  # a bug or an unexpected failure: record it, keep the run going
            log.exception("%s: unexpected error", self.prompt.key)
            self._set_item(status="failed", reason="failed", error=("internal", redact(f"{type(e).__name__}: {e}")), finished=True)
            return "failed"
        self._set_item(status="completed", reason=reason, error=("", ""), finished=True)
        return "completed"

    async def _iterate(self, elements: tuple[Element, ...]) -> str:
        """Generate, judge, refine, generate … until the target score, the last iteration, or a
        refiner that leaves the prompt as it was; return which of those stopped it."""
        config = self.ctx.config
        self.prompt_steps = PromptSteps(self, elements)
        text = await self.prompt_steps.first_prompt()  # the original, or enhanced before iteration 1
        for number in range(1, config.iterations + 1):
            it, ev = await shots.run_step(self, number, text, elements)  # the step's images; the best one's judgement
            if config.target_score is not None and ev.overall_score >= config.target_score:
                return "target_reached"
            if number == config.iterations:
                return "iterations_done"
            refinement = await self.refined(it, ev)
            if refinement.new_prompt.strip() == text.strip():
                log.info("%s: refiner left the prompt unchanged; stopping at iteration %d", self.prompt.key, number)
                return "prompt_unchanged"
            text = refinement.new_prompt
        return "iterations_done"  # only with iterations < 1, which a run's config refuses

    def _check_stop(self) -> None:
        if self.ctx.stopping():
            raise Stopped()

    def _leave_pending(self, reason: str) -> None:
        """Back to ``pending``, with what is done so far in the summary (rewritten when the prompt
        finishes). On a full disk this may not fit: the runner puts the prompt back to pending at
        the run's end, and resume rewrites every sidecar."""
        try:
            self._set_item(status="pending", reason=reason)
            self._write_summary()
        except DiskFull:
            pass

    # ---- elements (once per prompt) ----------------------------------------------------------
    async def elements(self) -> tuple[Element, ...]:
        rows = list(self.stored_elements)
        if not rows:
            made, source = await self._decompose()
            # Plus "the same character / subject as the reference?" for each subject it must keep.
            extra = subjects.subject_elements(self.prompt, self.reference_rows, max((e.number for e in made.elements), default=0))
            made_elements = (*made.elements, *extra)
            now = utcnow()
            values = [dict(prompt_id=self.prompt.id or 0, number=e.number, category=e.category, question=e.question,
                           tuple_text=e.tuple_text, parent_numbers=list(e.parent_numbers), critical=e.critical,
                           source=source if e.category != "reference" else "references", created_at=now) for e in made_elements]
            try:
                with self.ledger.transaction() as s:
                    append_all(s, PromptElement, values)  # one statement, no objects: nothing reads the rows back
                return made_elements
            except IntegrityError:  # another run of the same prompt stored them first: use those
                with session(self.ctx.engine) as s:
                    rows = stored_elements(s, self.prompt.id)
        return tuple(Element(number=r.number, category=r.category, question=r.question, tuple_text=r.tuple_text,
                             parent_numbers=tuple(r.parent_numbers), critical=r.critical) for r in rows)

    async def _decompose(self) -> tuple[Decomposition, str]:
        """Stage A, logged like any call when the judge asks a service (failure ends the prompt as failed)."""
        judges = self.ctx.judges
        if not judges.primary.remote_decompose:
            return await judges.primary.decompose(self.original_text), judges.primary.name
        self._check_stop()
        try:
            call: Call[Judge, Decomposition] = await self.ledger.call(judges, "decompose", 0, lambda j: j.decompose(self.original_text))
        except ProviderError as e:
            status = "blocked" if isinstance(e, ContentBlocked) else "failed"
            raise StepFailed(status, e.kind, f"the prompt's elements could not be listed: {self.ledger.failure('judge', e)}") from None
        self.ledger.record_call(call, self.ledger.cost(call, call.value.cost_usd, call.value.model))
        return call.value, call.component.name

    # ---- generate ----------------------------------------------------------------------------
    async def generated(self, number: int, text: str) -> Iteration:
        it = self.iterations.get(number)
        if it is not None and it.status == "ok" and self._image_intact(it):
            return it
        self._check_stop()
        it, rewrites = self._begin_iteration(number, text, it)
        call = await self._generate(it, rewrites)
        result, info = call.value
        cost = self.ledger.cost(call, result.cost_usd, result.model, info.width, info.height)
        image_path = self.folder / f"iteration_{number}.{info.extension}"
        thumb = await asyncio.to_thread(self._store_image, image_path, result.data, info.sha256)
        self._fresh_image = (number, result.data)  # the judge needs these bytes next: no need to read them back
        provider = call.component
        it.status, it.provider, it.model = "ok", provider.name, result.model or provider.model
        it.image_path = str(image_path.relative_to(self.ctx.output_dir))
        it.mime_type, it.width, it.height = info.mime_type, info.width, info.height
        it.sha256, it.byte_size = info.sha256, info.byte_size
        it.latency_ms, it.cost_usd, it.finished_at = call.served.latency_ms, cost, utcnow()
        compressed = (it.routing or {}).get("compressed")  # the version each provider was sent (prompt_steps)
        it.routing = {**call.served.routing(), **({"rewrites": rewrites} if rewrites else {}),
                      **({"compressed": compressed} if compressed else {})}
        submitted = it.service_meta if (it.service_meta or {}).get("service") == provider.name else {}
        it.request_id = result.request_id or (it.request_id if submitted else "")
        it.source_url = "" if result.source_url.startswith("data:") else result.source_url[:2000]
        it.service_meta = {**submitted, "service": provider.name, "response": _compact(result.metadata)}
        with self.ledger.record(call, cost, http_status=result.http_status, model=it.model) as s:
            update_row(s, it, *ITERATION_FIELDS)
            append(s, Thumbnail, {"iteration_id": it.id, "mime_type": thumb.mime_type, "width": thumb.width,
                                  "height": thumb.height, "data": thumb.data})
        await self._sidecars(self._write_results, it)
        self.ctx.on_step()
        return it

    def _begin_iteration(self, number: int, text: str, it: Iteration | None) -> tuple[Iteration, list[dict[str, Any]]]:
        """The iteration's row, marked ``running`` and committed before the provider is asked."""
        rewrites: list[dict[str, Any]] = []
        if it is not None:  # a rewrite made after a block, before a crash, is kept: it was paid for
            earlier = list((it.routing or {}).get("rewrites", []))
            if earlier and earlier[0].get("from") == text:
                rewrites, text = earlier, earlier[-1]["to"]
        primary = self.ctx.providers.primary
        self.evaluations.pop(number, None)  # a regenerated image needs a fresh judgement
        new = it is None
        running_before = it is not None and it.status == "running"  # cut off mid-call: its job may still be at the service
        if it is None:
            # Every field with a default factory is set just below: given here, pydantic does not resolve them (~0.1 ms)
            it = Iteration(run_item_id=self.item_id, number=number, prompt_text=text, parameters={}, routing={}, service_meta={},
                           parent_ids=[], started_at=utcnow())
        it.prompt_text, it.negative_prompt = text, self.prompt.negative_prompt
        it.provider, it.model, it.seed = primary.name, primary.model, shots.shot_seed(self.seed, number)
        it.operation, it.parent_ids = shots.lineage(self, number)
        it.parameters = {"width": self.width, "height": self.height, **self._request_extras()}
        it.status, it.error_kind, it.error_message = "running", "", ""
        it.started_at, it.finished_at, it.routing = utcnow(), None, {"rewrites": rewrites} if rewrites else {}
        if not (it.request_id and running_before):  # only a job in flight when the run stopped is worth polling again
            it.request_id, it.source_url, it.service_meta = "", "", {}
        with self.ledger.transaction() as s:
            if new:
                insert_row(s, it)
            else:  # a half-done or failed attempt: the same row is reused, and any old judgement dropped
                for model in (Evaluation, Thumbnail):
                    delete_where(s, model, "iteration_id", it.id)
                update_row(s, it, *ITERATION_FIELDS)
        self.iterations[number] = it
        self._fresh_image = None
        return it, rewrites

    async def _generate(self, it: Iteration, rewrites: list[dict[str, Any]]) -> Call[ImageProvider, tuple[GeneratedImage, ImageInfo]]:
        """The image from the provider chain; a blocked prompt is rewritten to comply up to
        ``block_rewrites`` times (each rewrite kept in ``rewrites``) before the prompt ends blocked."""
        max_pixels = self.ctx.settings.images.max_pixels
        earlier = self._submitted_earlier(it)
        while True:
            fitted = await self.prompt_steps.fitted(it)  # a version for each provider whose window the prompt is over
            request = GenerationRequest(prompt=shots.sent_text(self, it.prompt_text), width=self.width, height=self.height,
                                        seed=it.seed if it.seed is not None else self.seed,
                                        negative_prompt=self.prompt.negative_prompt, prompt_id=self.prompt.key,
                                        reference_images=self.references, auto_size=self.auto_size,
                                        on_submitted=self._recorder(it))

            async def send(provider: ImageProvider, request: GenerationRequest = request,
                           fitted: dict[str, str] = fitted) -> tuple[GeneratedImage, ImageInfo]:
                nonlocal earlier
                if earlier is not None and earlier.service == provider.name:  # polled once, by the service that has it
                    request, earlier = replace(request, resume=earlier), None
                if provider.name in fitted:
                    request = replace(request, prompt=fitted[provider.name])
                result = await provider.generate(request)
                # Checking decodes the image (a few ms): off the event loop, like the write.
                info = await asyncio.to_thread(inspect_image, result.data, claimed_mime=result.mime_type, max_pixels=max_pixels)
                return result, info

            try:
                return await self.ledger.call(self.ctx.providers, "generate", it.number, send, iteration_id=it.id,
                                              estimate=lambda p: table_price(p, self.width, self.height), refuse=self._refusal)
            except ContentBlocked as e:
                if len(rewrites) >= self.ctx.config.block_rewrites:
                    self._generation_failed(it, "blocked", e)
                rewrites.append(await self._rewrite_blocked(it, e, len(rewrites) + 1))
                it.prompt_text, it.routing = rewrites[-1]["to"], {"rewrites": rewrites}
                with self.ledger.transaction() as s:
                    update_row(s, it, "prompt_text", "routing")
            except ProviderError as e:
                self._generation_failed(it, "failed", e)

    def _submitted_earlier(self, it: Iteration) -> Submission | None:
        """The job a service accepted for this very prompt text before the run stopped, if any."""
        meta = it.service_meta or {}
        if not it.request_id or meta.get("prompt_sha256") != _sha256(it.prompt_text):
            return None
        log.info("%s: iteration %d: %s still has request %s from before the run stopped; polling it first",
                 self.prompt.key, it.number, meta.get("service"), it.request_id)
        return Submission(str(meta.get("service", "")), it.request_id, dict(meta.get("submission") or {}))

    def _recorder(self, it: Iteration) -> Callable[[Submission], None]:
        """``on_submitted``: store the service's request id (and how to poll it) before anyone waits
        on it, so a crash cannot lose a job that is being paid for."""
        prompt_sha256 = _sha256(it.prompt_text)

        def record(submission: Submission) -> None:
            it.request_id = submission.request_id
            it.service_meta = {"service": submission.service, "submission": _compact(submission.meta), "prompt_sha256": prompt_sha256}
            with self.ledger.transaction() as s:
                update_row(s, it, "request_id", "service_meta")

        return record

    async def _rewrite_blocked(self, it: Iteration, blocked: ContentBlocked, count: int) -> dict[str, Any]:
        """Ask the refiner to rewrite a blocked prompt so it complies."""
        by = self.ledger.last_failed
        judgement = Judgement(criteria={}, issues=[Issue(kind="content_policy", description=f"{by} refused it: {blocked}",
                                                         suggestion=self.ctx.settings.run.block_rewrite_hint, severity=1.0)])
        request = RefinementRequest(original_prompt=self.original_text, current_prompt=it.prompt_text, judgement=judgement,
                                    failed_checks=(), history=(), purpose="comply")
        try:
            call: Call[Refiner, RefinedPrompt] = await self.ledger.call(
                self.ctx.refiners, "refine", it.number, lambda r: self._checked(r.refine(request)), iteration_id=it.id,
                step=f"rewrite{count}")
        except ProviderError as e:
            self._generation_failed(it, "blocked", ContentBlocked(f"{blocked}; rewriting it to comply failed: {e}",
                                                                  http_status=blocked.http_status))
        refined = call.value
        self.ledger.record_call(call, self.ledger.cost(call, refined.cost_usd, refined.model))
        if refined.prompt.strip() == it.prompt_text.strip():
            self._generation_failed(it, "blocked", ContentBlocked(f"{blocked}; the refiner could not rewrite it",
                                                                  http_status=blocked.http_status))
        log.info("%s: iteration %d blocked by %s; rewritten by %s to comply", self.prompt.key, it.number, by, call.component.name)
        return {"from": it.prompt_text, "to": refined.prompt, "rationale": refined.rationale, "blocked_by": by,
                "refiner": call.component.name}

    def _generation_failed(self, it: Iteration, status: str, e: ProviderError) -> NoReturn:
        """Record the iteration as failed or blocked, and end the prompt."""
        it.status, it.error_kind, it.error_message = status, e.kind, str(e)
        it.finished_at = utcnow()
        it.routing = {**(it.routing or {}), "served_by": "", "skipped": [s.as_dict() for s in e.skipped]}
        with self.ledger.transaction() as s:
            update_row(s, it, *ITERATION_FIELDS)
        self._write_results(it)
        what = f"{self.ledger.last_failed} blocked the prompt: {e}" if status == "blocked" else self.ledger.failure("", e)
        raise StepFailed(status, e.kind, f"iteration {it.number}: {what}")

    def _store_image(self, where: Path | str, data: bytes, sha256: str) -> Thumb:
        """Write the image (whole or not at all, to the folder or the bucket) and make its gallery thumbnail;
        run off the event loop. ``where``: its key in the run's store, or its path under the output folder."""
        images = self.ctx.settings.images
        key = where.relative_to(self.ctx.output_dir).as_posix() if isinstance(where, Path) else where
        self.store.put(key, data, sha256=sha256)
        return make_thumbnail(data, side=images.thumbnail_side, fmt=images.thumbnail_format,
                              quality=images.thumbnail_quality, sha256=sha256)

    def image_bytes(self, it: Iteration) -> bytes:
        """The image of ``it``: the bytes just generated, else its file."""
        fresh = self._fresh_image
        return fresh[1] if fresh and fresh[0] == it.number else self.store.get(it.image_path)

    def _image_intact(self, it: Iteration) -> bool:
        """A finished generation counts only while its file is there with the recorded hash."""
        try:  # a bucket records each object's hash: no need to download the image to check it
            recorded = (info.sha256 if (info := self.store.info(it.image_path)) else "") or ""
            intact = (recorded or hashlib.sha256(self.store.get(it.image_path)).hexdigest()) == it.sha256
        except ObjectMissing:
            intact = False
        if not intact:
            log.warning("%s: iteration %d image missing or changed at %s; generating it again", self.prompt.key, it.number,
                        self.store.where(it.image_path))
        return intact

    # ---- judge -------------------------------------------------------------------------------
    async def judged(self, it: Iteration, elements: tuple[Element, ...]) -> Evaluation:
        if it.number in self.evaluations:
            return self.evaluations[it.number]
        self._check_stop()
        data = self.image_bytes(it)
        # A grid cell is judged at its own size (the grid as a whole was the size asked for).
        wanted = (it.width or self.width, it.height or self.height) if it.operation == "grid-cell" else (self.width, self.height)
        request = EvaluationRequest(original_prompt=self.original_text, sent_prompt=it.prompt_text, elements=elements,
                                    image=data, mime_type=it.mime_type, requested_width=wanted[0], requested_height=wanted[1],
                                    reference_images=subjects.subject_images(self.references))
        try:
            call: Call[Judge, Judgement] = await self.ledger.call(self.ctx.judges, "evaluate", it.number, lambda j: j.evaluate(request),
                                                                  iteration_id=it.id)
        except ProviderError as e:
            raise StepFailed("failed", e.kind, f"iteration {it.number}: {self.ledger.failure('judge', e)}") from None
        judgement, judge = call.value, call.component
        cost = self.ledger.cost(call, judgement.cost_usd, judgement.model)
        score = scoring.overall(judgement, elements, self.ctx.settings.scoring.faithfulness_weight)
        top = judgement.top_issue
        ev = Evaluation(
            iteration_id=it.id or 0, judge=judge.name, model=judgement.model or judge.model, overall_score=score,
            criteria=judgement.criteria, checks=[c.__dict__ for c in judgement.checks],
            issues=[i.__dict__ for i in sorted(judgement.issues, key=lambda i: -i.severity)],
            top_suggestion=(top.suggestion or top.description) if top else "",
            raw_response=judgement.raw_response, latency_ms=call.served.latency_ms, cost_usd=cost, routing=call.served.routing(),
        )
        with self.ledger.record(call, cost) as s:
            insert_row(s, ev)
            best = max(self.evaluations.values(), key=lambda e: e.overall_score, default=None)
            if best is None or score >= best.overall_score:
                self.item.best_score, self.item.final_iteration = score, it.number
                self.ledger.touch()
        self.evaluations[it.number] = ev
        await self._sidecars(sidecars.write_iteration_evaluation, self.store, self.sidecar_folder,
                             sidecars.iteration_evaluation(self.prompt, it, ev))
        self.ctx.on_step()
        return ev

    # ---- refine ------------------------------------------------------------------------------
    async def refined(self, it: Iteration, ev: Evaluation) -> Refinement:
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
            call: Call[Refiner, RefinedPrompt] = await self.ledger.call(self.ctx.refiners, "refine", it.number,
                                                                        lambda r: self._checked(r.refine(request)), iteration_id=it.id)
        except ProviderError as e:
            raise StepFailed("failed", e.kind, f"iteration {it.number}: {self.ledger.failure('refiner', e)}") from None
        refined, refiner = call.value, call.component
        cost = self.ledger.cost(call, refined.cost_usd, refined.model)
        ref = Refinement(run_item_id=self.item_id, from_iteration=it.number, new_prompt=refined.prompt,
                         refiner=refiner.name, model=refined.model or refiner.model, rationale=refined.rationale,
                         edits=refined.edits, latency_ms=call.served.latency_ms, cost_usd=cost, routing=call.served.routing())
        with self.ledger.record(call, cost) as s:
            insert_row(s, ref)
        self.refinements[it.number] = ref
        self.ctx.on_step()
        return ref

    async def _checked(self, refining: Any) -> RefinedPrompt:
        """A refiner's answer, refused when empty or over the prompt length limit."""
        refined: RefinedPrompt = await refining
        max_chars = self.ctx.settings.prompt.max_chars
        if not refined.prompt.strip():
            raise ProviderError("the refiner returned an empty prompt", kind="malformed")
        if len(refined.prompt) > max_chars:
            raise ProviderError(f"the refined prompt is {len(refined.prompt):,} characters, over the limit of {max_chars:,}", kind="malformed")
        return refined

    # ---- the prompt's row and its sidecars -----------------------------------------------------
    def _set_item(self, *, status: str, reason: str, error: tuple[str, str] | None = None, started: bool = False,
                  finished: bool = False, defer: bool = False) -> None:
        """Record the prompt's status and why it stopped (``reason``, a key of display.STOP_REASONS;
        "" while it runs); ``defer`` lets the next step's commit carry it (one commit fewer)."""
        item = self.item
        item.status, item.stop_reason = status, reason
        if error is not None:
            item.error_kind, item.error_message = error
        if started and item.started_at is None:
            item.started_at = utcnow()
        if finished:
            item.finished_at = utcnow()
            self._write_summary()  # before the row: a full disk must not leave a finished prompt without its summary
        self.ledger.touch()
        if not defer:
            self.ledger.save()

    async def _sidecars(self, write: Callable[..., None], *args: Any) -> None:
        """Write sidecars: at once into a folder (as before), off the event loop into a bucket (a PUT takes
        milliseconds, and other prompts' steps go on meanwhile)."""
        if self.store.local_path(self.sidecar_folder) is None:
            await asyncio.to_thread(write, *args)
        else:
            write(*args)

    def _write_results(self, it: Iteration) -> None:
        ref = self.refinements.get(it.number - 1)
        sidecars.write_iteration_results(self.store, self.sidecar_folder, sidecars.iteration_results(self.ctx.run, self.prompt, it, ref))

    def _write_summary(self) -> None:
        rows = [(it, self.evaluations.get(n)) for n, it in sorted(self.iterations.items())]
        sidecars.write_summary(self.store, self.sidecar_folder, sidecars.summary(self.ctx.run, self.prompt, self.item, rows))

    def mirror_sidecars(self) -> None:
        """Rewrite every sidecar of this prompt from its records (after a crash, some may be missing)."""
        if not self.iterations:
            return
        for number, it in sorted(self.iterations.items()):
            self._write_results(it)
            if number in self.evaluations:
                sidecars.write_iteration_evaluation(self.store, self.sidecar_folder, sidecars.iteration_evaluation(self.prompt, it, self.evaluations[number]))
        self._write_summary()
