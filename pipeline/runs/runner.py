"""Executing a run: a bounded pool of asyncio workers pulling prompts from a queue.

Workers take the next prompt as soon as they finish one, so a slow prompt holds up only its
own worker, never a whole batch. Stopping (first Ctrl-C, SIGTERM, a Cancel from the dashboard,
a dashboard shutting down) takes no new work and gives the calls in flight ``[runner]
stop_grace_s`` to finish, so paid work is kept; then their tasks are cancelled, and each call
still in flight is logged ``cancelled``. :meth:`RunExecutor.abort` (second Ctrl-C) cancels them
at once. A call that ignores its cancellation is left behind after ``cancel_wait_s``: the run
ends anyway. Either way the run is left resumable, and a prompt cut off mid-step is redone on
resume. Statuses a run ends in:

- ``completed``: every prompt reached an end state (some may have failed or been blocked:
  :attr:`RunSummary.outcome` says so)
- ``interrupted``: stopped with prompts left; ``python -m pipeline resume RUN_ID`` continues
- ``paused``: the next call would have passed the run's budget; resume with ``--budget`` higher
  (calls already in flight, within the budget, finish first). Or the disk filled up: the
  error names the path and the space needed; resume once there is room. No prompt fails for it.
- ``cancelled``: a user asked for it to be cancelled
- ``failed``: the run could not proceed (e.g. an unknown provider)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import select

from pipeline import quotas, registry
from pipeline.config import Settings
from pipeline.errors import DarkroomError, DiskFull, StorageError
from pipeline.files import remove_leftover_temp_files
from pipeline.resilience.breaker import Transition
from pipeline.resilience.budget import Budget
from pipeline.resilience.routing import ServiceChain, member_for
from pipeline.runs.job import PromptJob, RunContext
from pipeline.runs.projects import project_of, spent_by_project
from pipeline.runs.records import (
    EXECUTING_HERE,
    HEARTBEAT_SECONDS,
    RunConfig,
    RunSummary,
    get_run,
    output_dir_of,
    prompt_keys,
    refresh_counts,
    summary_of,
    this_owner,
    unfinished_items,
)
from pipeline.services.pools import shared_connections
from pipeline.store.db import session
from pipeline.store.models import BreakerEvent, RunItem, row_id, utcnow

log = logging.getLogger("pipeline.runs.runner")


class RunExecutor:
    def __init__(self, engine: Engine, settings: Settings, run_id: int, *,
                 on_progress: Callable[[RunSummary], None] | None = None) -> None:
        self.engine = engine
        self.settings = settings
        self.run_id = run_id
        self.on_progress = on_progress
        self.grace_s, self.cancel_wait_s = settings.runner.stop_grace_s, settings.runner.cancel_wait_s
        self._stop = False
        self._cancelled_by_user = False
        self._paused: str = ""  # why the budget (or a full disk) stopped the run
        self._fatal: StorageError | None = None  # the database or data folder became unusable: the run cannot go on
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        self._aborted = False
        self._released: asyncio.Future[None] | None = None  # set when the run stops waiting for its workers
        self._keys: dict[int, str] = {}  # run item id -> prompt id, for the log
        self._running = 0
        self._t0 = time.monotonic()
        self._last_report = 0.0

    # ---- control (on the run's event loop) ----------------------------------------------------
    def request_stop(self) -> None:
        """Take no new work; calls in flight get ``stop_grace_s`` to finish, then are cancelled."""
        if self._stop:
            return
        self._stop = True
        log.warning("run %s: stopping: no new work; calls in flight get %g s to finish, then are cancelled "
                    "(interrupt again to cancel them now)", self.run_id, self.grace_s)
        self._arm()

    def cancel(self) -> None:
        """A user's cancel: like :meth:`request_stop`, but the run ends ``cancelled``."""
        self._cancelled_by_user = True
        self.request_stop()

    def abort(self) -> None:
        """Cancel the calls in flight now (second Ctrl-C, or the end of the grace period)."""
        self._stop = True
        if self._aborted:
            return
        self._aborted = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        busy = [t for t in self._tasks if not t.done()]
        if busy:
            log.warning("run %s: cancelling the calls in flight of %d prompt(s)", self.run_id, len(busy))
        for task in busy:
            task.cancel()
        if self._loop is not None:
            self._loop.call_later(self.cancel_wait_s, self._stop_waiting)

    @property
    def stopping(self) -> bool:
        return self._stop

    def stop_cause(self) -> str:
        """Why the run is stopping, for the prompts it leaves pending (their ``stop_reason``)."""
        return "cancelled" if self._cancelled_by_user else "paused" if self._paused else "interrupted"

    def _arm(self) -> None:
        """Schedule :meth:`abort` for the end of the grace period (once the loop is known)."""
        if self._loop is not None and self._abort_timer is None and not self._aborted:
            self._abort_timer = self._loop.call_later(self.grace_s, self.abort)

    def _stop_waiting(self) -> None:
        stuck = sum(not t.done() for t in self._tasks)
        if stuck:
            log.warning("run %s: %d prompt(s) did not stop within %g s of being cancelled; the run ends without them",
                        self.run_id, stuck, self.cancel_wait_s)
        if self._released is not None and not self._released.done():
            self._released.set_result(None)

    # ---- execution -----------------------------------------------------------------------------
    async def execute(self) -> RunSummary:
        EXECUTING_HERE.add(self.run_id)
        try:
            async with shared_connections():  # one keep-alive connection pool per service for the whole run
                return await self._execute()
        finally:
            EXECUTING_HERE.discard(self.run_id)

    async def _execute(self) -> RunSummary:
        self._loop = asyncio.get_running_loop()
        self._t0 = time.monotonic()
        with session(self.engine) as s:
            run = get_run(s, self.run_id)
            config = RunConfig.from_dict(run.config)
            run.status, run.owner, run.heartbeat_at, run.error = "running", this_owner(), utcnow(), ""
            run.started_at = run.started_at or utcnow()
            run.finished_at = None
            # A prompt left "running" by a crash is picked up again like a pending one.
            for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, RunItem.status == "running")):
                item.status = "pending"
            refresh_counts(s, run)  # the cost so far, from the call log: the budget starts from it
            s.commit()
            budget = Budget(config.budget_usd, run.cost_usd)
            project = project_of(s, run)
            if project is not None and project.budget_usd is not None:
                budget.project_cap_usd, budget.project_name = project.budget_usd, project.name
                budget.project_spent_usd = spent_by_project(s, row_id(project), excluding_run=row_id(run))
            pending = [row_id(item) for item in unfinished_items(s, row_id(run))]
            self._keys = prompt_keys(s, row_id(run))
        output_dir = output_dir_of(self.settings, run)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # became a file, or unwritable, since the run was queued: say so, leave it resumable
            return self._finish("failed", error=f"the output folder {output_dir} cannot be used: {e.strerror or e}")
        quotas.board.persist_to(self.settings.data_dir / quotas.QUOTAS_FILE)  # the Providers page reads what services said
        removed = remove_leftover_temp_files(output_dir)
        if removed:
            log.info("run %s: removed %d temporary file(s) left by an earlier crash", run.id, removed)
        try:
            ctx = RunContext(
                engine=self.engine, settings=self.settings, run=run, config=config,
                providers=self._chain("provider", registry.providers, config.providers, config.routing),
                judges=self._chain("judge", registry.judges, config.judges),
                refiners=self._chain("refiner", registry.refiners, config.refiners),
                output_dir=output_dir, stopping=lambda: self._stop, budget=budget,
                on_step=self._step_done, on_budget=self._pause, stop_cause=self.stop_cause,
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
        if self._stop:  # asked to stop before it started (e.g. the dashboard is shutting down)
            self._arm()
        heartbeat = asyncio.create_task(self._heartbeat())
        self._tasks = [asyncio.create_task(self._worker(ctx, queue)) for _ in range(min(config.concurrency, len(pending)) or 0)]
        self._released = self._loop.create_future()
        workers = asyncio.gather(*self._tasks, return_exceptions=True)
        waited: set[asyncio.Future[Any]] = {workers, self._released}
        try:
            await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # whoever awaited the run gave up on it: stop its prompts, leave it resumable
            for task in self._tasks:
                task.cancel()
            self._finish("interrupted")
            raise
        finally:
            heartbeat.cancel()
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            for breaker in breakers:
                breaker.listeners.remove(self._breaker_moved)
        if self._fatal is not None:  # e.g. the database turned out damaged: its message is the run's outcome
            try:
                self._finish("failed", error=str(self._fatal))
            except StorageError:
                pass
            raise self._fatal
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
            key = self._keys.get(item_id, f"item {item_id}")
            self._running += 1
            try:
                status = await PromptJob(ctx, item_id).run()
                log.info("run %s: prompt %s %s", self.run_id, key, status)
            except asyncio.CancelledError:
                log.warning("run %s: prompt %s cancelled mid-step; resume redoes that step", self.run_id, key)
                raise
            except StorageError as e:  # the prompt stays pending: nothing about it failed
                self._storage_failed(e)
            finally:
                self._running -= 1
                self._report(force=True)

    async def _heartbeat(self) -> None:
        """Keep the claim on the run fresh, notice a cancel asked from elsewhere, report progress."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                with session(self.engine) as s:
                    run = get_run(s, self.run_id)
                    run.heartbeat_at = utcnow()
                    refresh_counts(s, run)
                    s.commit()
            except StorageError as e:
                self._storage_failed(e)
                continue
            if run.cancel_requested and not self._cancelled_by_user:
                log.warning("run %s: cancel requested", self.run_id)
                self.cancel()

    def _chain(self, role: str, reg: registry.Registry, names: list[str], mode: str = "fallback") -> ServiceChain:  # type: ignore[type-arg]
        return ServiceChain(role, [member_for(self.settings, reg.create(n, self.settings)) for n in names], mode=mode)

    def _pause(self, reason: str) -> None:
        """The budget is spent, or the disk is full: no new work, and the run ends ``paused`` with
        ``reason`` (logged once). Calls in flight were within the budget, so they finish."""
        if not self._paused:
            log.warning("run %s: pausing: %s", self.run_id, reason)
            self._paused = reason
        self._stop = True

    def _storage_failed(self, e: StorageError) -> None:
        """A full disk pauses the run (resumable once there is space); any other storage failure
        (a damaged database, a read-only folder) ends it with that message."""
        if isinstance(e, DiskFull):
            self._pause(str(e))
        elif self._fatal is None:
            self._fatal = e
            self._stop = True

    def _breaker_moved(self, t: Transition) -> None:
        """Record a circuit breaker's change of state for the Providers page."""
        with session(self.engine) as s:
            s.add(BreakerEvent(service=t.service, state=t.state, reason=t.reason[:500], failures=t.failures, run_id=self.run_id))
            s.commit()

    def _step_done(self) -> None:
        self._report()

    def _snapshot(self) -> RunSummary:
        with session(self.engine) as s:
            run = get_run(s, self.run_id)
            refresh_counts(s, run)
            s.commit()
            return summary_of(run, running=self._running, elapsed_s=time.monotonic() - self._t0)

    def _report(self, force: bool = False) -> None:
        """Progress after a finished prompt always; after a step at most five times a second."""
        if self.on_progress is None:
            return
        now = time.monotonic()
        if force or now - self._last_report >= 0.2:
            self._last_report = now
            try:
                snapshot = self._snapshot()
            except StorageError as e:
                self._storage_failed(e)
                return
            self.on_progress(snapshot)

    def _record_end(self, status: str, error: str, *, commit: bool = True) -> RunSummary:
        """Write how the run ended: its status, why, and its prompts cut off mid-step back to pending."""
        with session(self.engine) as s:
            run = get_run(s, self.run_id)
            for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, RunItem.status == "running")):
                item.status, item.stop_reason = "pending", self.stop_cause()  # cut off mid-step: redone on resume
            refresh_counts(s, run)
            run.status, run.error, run.owner = status, error, ""
            run.finished_at = utcnow()
            summary = summary_of(run, elapsed_s=time.monotonic() - self._t0)
            if commit:
                s.commit()
        return summary

    def _finish(self, status: str, error: str = "") -> RunSummary:
        quotas.board.flush()
        try:
            summary = self._record_end(status, error)
        except DiskFull:  # that failed write gave up the database's reserve: there is room now
            try:
                summary = self._record_end(status, error)
            except DiskFull as e:  # still none: say how it ended all the same (a later start marks it interrupted)
                log.warning("run %s: could not record that it ended %s: %s", self.run_id, status, e)
                summary = self._record_end(status, error, commit=False)
        log.info("run %s %s: %d completed, %d failed, %d blocked of %d; $%.4f; %.1fs",
                 summary.id, summary.outcome, summary.completed, summary.failed, summary.blocked, summary.total,
                 summary.cost_usd, summary.elapsed_s or 0.0)
        if error and status == "failed":
            log.error("run %s failed: %s", summary.id, error)
        return summary
