"""Executing a run: a bounded pool of asyncio workers pulling prompts from a queue.

Workers take the next prompt as soon as they finish one, so a slow prompt holds up only its
own worker, never a whole batch. :meth:`RunExecutor.request_stop` (first Ctrl-C, SIGTERM, or a
cancel from the dashboard) stops taking new work and lets in-flight steps finish;
:meth:`RunExecutor.abort` (second Ctrl-C) cancels them too; either way the run is left
resumable. Statuses a run ends in:

- ``completed``: every prompt reached an end state (some may have failed or been blocked)
- ``interrupted``: stopped with prompts left; ``python -m pipeline resume RUN_ID`` continues
- ``paused``: the next call would have passed the run's budget; resume with ``--budget`` higher
- ``cancelled``: a user asked for it to be cancelled
- ``failed``: the run could not proceed (e.g. an unknown provider)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import select

from pipeline import registry
from pipeline.config import Settings
from pipeline.errors import DarkroomError
from pipeline.files import remove_leftover_temp_files
from pipeline.resilience.breaker import Transition
from pipeline.resilience.budget import Budget
from pipeline.resilience.routing import ServiceChain, member_for
from pipeline.runs.job import PromptJob, RunContext
from pipeline.runs.records import HEARTBEAT_SECONDS, RunConfig, output_dir_of, refresh_counts, this_owner, unfinished_items
from pipeline.store.db import session
from pipeline.store.models import BreakerEvent, Run, RunItem, utcnow

log = logging.getLogger("pipeline.runs.runner")


@dataclass(frozen=True)
class Progress:
    run_id: int
    total: int
    completed: int
    failed: int
    blocked: int
    running: int
    steps: int
    cost_usd: float
    elapsed_s: float

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.blocked


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str
    total: int
    completed: int
    failed: int
    blocked: int
    cost_usd: float
    elapsed_s: float

    @property
    def unfinished(self) -> int:
        return self.total - self.completed - self.failed - self.blocked


class RunExecutor:
    def __init__(self, engine: Engine, settings: Settings, run_id: int, *,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.run_id = run_id
        self.on_progress = on_progress
        self._stop = False
        self._cancelled_by_user = False
        self._paused: str = ""  # why the budget stopped the run
        self._tasks: list[asyncio.Task[None]] = []
        self._running = 0
        self._steps = 0
        self._t0 = time.monotonic()
        self._last_report = 0.0

    # ---- control -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        if not self._stop:
            log.warning("run %s: stopping: no new work; in-flight steps finish (interrupt again to cancel them)", self.run_id)
        self._stop = True

    def cancel(self) -> None:
        """A user's cancel: like :meth:`request_stop`, but the run ends ``cancelled``."""
        self._cancelled_by_user = True
        self.request_stop()

    def abort(self) -> None:
        self._stop = True
        log.warning("run %s: cancelling in-flight steps", self.run_id)
        for task in self._tasks:
            task.cancel()

    @property
    def stopping(self) -> bool:
        return self._stop

    # ---- execution -----------------------------------------------------------------------------
    async def execute(self) -> RunOutcome:
        self._t0 = time.monotonic()
        with session(self.engine) as s:
            run = s.get(Run, self.run_id)
            config = RunConfig.from_dict(run.config)
            run.status, run.owner, run.heartbeat_at, run.error = "running", this_owner(), utcnow(), ""
            run.started_at = run.started_at or utcnow()
            run.finished_at = None
            # A prompt left "running" by a crash is picked up again like a pending one.
            for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, RunItem.status == "running")):
                item.status = "pending"
            refresh_counts(s, run)  # the cost so far, from the call log: the budget starts from it
            s.commit()
            pending = [item.id for item in unfinished_items(s, run.id)]
        output_dir = output_dir_of(self.settings, run)
        output_dir.mkdir(parents=True, exist_ok=True)
        removed = remove_leftover_temp_files(output_dir)
        if removed:
            log.info("run %s: removed %d temporary file(s) left by an earlier crash", run.id, removed)
        try:
            ctx = RunContext(
                engine=self.engine, settings=self.settings, run=run, config=config,
                providers=self._chain("provider", registry.providers, config.providers, config.routing),
                judges=self._chain("judge", registry.judges, config.judges),
                refiners=self._chain("refiner", registry.refiners, config.refiners),
                output_dir=output_dir, stopping=lambda: self._stop, budget=Budget(config.budget_usd, run.cost_usd),
                on_step=self._step_done, on_budget=self._budget_reached,
            )
        except (DarkroomError, ValueError) as e:
            return self._finish("failed", error=str(e))
        names = {role: " → ".join(m.component.display_name() for m in chain.members)
                 for role, chain in (("providers", ctx.providers), ("judges", ctx.judges), ("refiners", ctx.refiners))}
        log.info("run %s: %d prompt(s) to do with providers %s (%s), judges %s, refiners %s, %d iteration(s), %d worker(s)%s",
                 run.id, len(pending), names["providers"], config.routing, names["judges"], names["refiners"],
                 config.iterations, config.concurrency, f", budget ${config.budget_usd:.4f}" if config.budget_usd is not None else "")
        breakers = [m.breaker for chain in (ctx.providers, ctx.judges, ctx.refiners) for m in chain.members]
        for breaker in breakers:
            breaker.listeners.append(self._breaker_moved)

        queue: asyncio.Queue[int] = asyncio.Queue()
        for item_id in pending:
            queue.put_nowait(item_id)
        heartbeat = asyncio.create_task(self._heartbeat())
        self._tasks = [asyncio.create_task(self._worker(ctx, queue)) for _ in range(min(config.concurrency, len(pending)) or 0)]
        try:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        finally:
            heartbeat.cancel()
            for breaker in breakers:
                breaker.listeners.remove(self._breaker_moved)
        if self._cancelled_by_user:
            return self._finish("cancelled")
        if self._paused:
            return self._finish("paused", error=self._paused)
        with session(self.engine) as s:
            left = len(unfinished_items(s, self.run_id))
        return self._finish("interrupted" if left else "completed")

    async def _worker(self, ctx: RunContext, queue: asyncio.Queue[int]) -> None:
        while not self._stop:
            try:
                item_id = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._running += 1
            try:
                status = await PromptJob(ctx, item_id).run()
                log.info("run %s: prompt item %d %s", self.run_id, item_id, status)
            finally:
                self._running -= 1
                self._report(force=True)

    async def _heartbeat(self) -> None:
        """Keep the claim on the run fresh, notice a cancel asked from elsewhere, report progress."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            with session(self.engine) as s:
                run = s.get(Run, self.run_id)
                run.heartbeat_at = utcnow()
                refresh_counts(s, run)
                s.commit()
                if run.cancel_requested and not self._stop:
                    log.warning("run %s: cancel requested", self.run_id)
                    self.cancel()

    def _chain(self, role: str, reg: registry.Registry, names: list[str], mode: str = "fallback") -> ServiceChain:  # type: ignore[type-arg]
        return ServiceChain(role, [member_for(self.settings, reg.create(n, self.settings)) for n in names], mode=mode)

    def _budget_reached(self, reason: str) -> None:
        if not self._paused:
            log.warning("run %s: pausing: %s", self.run_id, reason)
            self._paused = reason
        self.request_stop()

    def _breaker_moved(self, t: Transition) -> None:
        """Record a circuit breaker's change of state for the Providers page."""
        with session(self.engine) as s:
            s.add(BreakerEvent(service=t.service, state=t.state, reason=t.reason[:500], failures=t.failures, run_id=self.run_id))
            s.commit()

    def _step_done(self) -> None:
        self._steps += 1
        self._report()

    def _snapshot(self) -> Progress:
        with session(self.engine) as s:
            run = s.get(Run, self.run_id)
            refresh_counts(s, run)
            s.commit()
        return Progress(self.run_id, run.total, run.completed, run.failed, run.blocked, self._running, self._steps,
                        run.cost_usd, time.monotonic() - self._t0)

    def _report(self, force: bool = False) -> None:
        """Progress after a finished prompt always; after a step at most five times a second."""
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_report >= 0.2:
            self._last_report = now
            self.on_progress(self._snapshot())

    def _finish(self, status: str, error: str = "") -> RunOutcome:
        with session(self.engine) as s:
            run = s.get(Run, self.run_id)
            for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, RunItem.status == "running")):
                item.status = "pending"  # cancelled mid-step: redone on resume
            refresh_counts(s, run)
            run.status, run.error, run.owner = status, error, ""
            run.finished_at = utcnow()
            s.commit()
        elapsed = time.monotonic() - self._t0
        log.info("run %s %s: %d completed, %d failed, %d blocked of %d; $%.4f; %.1fs",
                 run.id, status, run.completed, run.failed, run.blocked, run.total, run.cost_usd, elapsed)
        if error and status == "failed":
            log.error("run %s failed: %s", run.id, error)
        return RunOutcome(run.id, status, run.total, run.completed, run.failed, run.blocked, run.cost_usd, elapsed)
