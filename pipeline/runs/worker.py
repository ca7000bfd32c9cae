"""``python -m pipeline worker``: a process that claims prompts from the shared database and executes them.

Any number of workers on any machines share the runs queued in one PostgreSQL database: each
claims one prompt at a time (:mod:`pipeline.runs.leases`, ``SELECT … FOR UPDATE SKIP LOCKED``),
runs it through its iterations exactly as the in-process runner does (:class:`PromptJob`, the
step ledger: a committed step is never paid twice), and claims the next. ``--concurrency`` prompts
run at once per worker. A heartbeat renews the worker's leases (prompts and provider slots);
a worker killed with -9 loses them when they run out, and another takes its prompts over.
Providers' limits and breakers are shared through the database (:mod:`pipeline.runs.shared_limits`),
so N workers never send N × ``max_concurrency``.

Why SKIP LOCKED on our own tables rather than a PostgreSQL task queue (procrastinate, pgqueuer):
the work items already are rows (``run_item``) with the state the resume rules need (status,
iterations, request ids); a queue library would add its own job table mirroring them, a second
source of truth to keep consistent on every crash, and it still could not express "a prompt's
lease" plus "the run's remaining prompts" without reading ours. A claim is three short statements
(the open runs; the first claimable prompt of the oldest, in id order by a partial index; the
update), and costs the same at the first prompt of a run as at its 20,000th.

A run's budget is checked by each worker against what the run has cost so far, all workers
included, as of its last heartbeat (``heartbeat_s``): the cap can be passed by what the other
workers spent since, at most their calls in flight over one heartbeat.

SIGTERM or Ctrl-C stops a worker the way a run stops: no new claims, the calls in flight get
``[runner] stop_grace_s`` to finish, then are cancelled; its unfinished prompts go back to
pending at once for the other workers (a kill -9 leaves that to the lease expiry).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from pipeline import load_run_modules, registry
from pipeline.config import Settings, defaults_from, from_table
from pipeline.errors import ConfigError, DarkroomError, DiskFull, InputError, StorageError
from pipeline.files import remove_leftover_temp_files
from pipeline.resilience import breaker
from pipeline.resilience.breaker import Transition
from pipeline.resilience.budget import Budget
from pipeline.resilience.routing import ServiceChain, member_for
from pipeline.runs import leases
from pipeline.runs.job import PromptJob, RunContext
from pipeline.runs.records import RunConfig, get_run, output_dir_of, refresh_counts
from pipeline.runs.shared_limits import DatabaseHealth, DatabaseLimits
from pipeline.services.pools import shared_connections
from pipeline.store.db import session
from pipeline.store.models import BreakerEvent, Run, utcnow

log = logging.getLogger("pipeline.runs.worker")
WORKERS_ENV = "DARKROOM_WORKERS"
_jitter = random.Random()  # its own: the global one belongs to whoever else runs in this process


@dataclass(frozen=True)
@defaults_from("workers")
class WorkerSettings:
    concurrency: int
    lease_s: float
    heartbeat_s: float
    poll_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "WorkerSettings":
        ws = from_table(cls, settings.section("workers"))
        if ws.concurrency < 1:
            raise ConfigError(f"[workers] concurrency must be at least 1, not {ws.concurrency}")
        if not 0 < ws.heartbeat_s < ws.lease_s:
            raise ConfigError(f"[workers] heartbeat_s ({ws.heartbeat_s:g}) must be above 0 and below lease_s ({ws.lease_s:g}), "
                              "or leases run out while their worker is alive")
        return ws


def in_process_executors(env: Mapping[str, str] = os.environ) -> int:
    """``DARKROOM_WORKERS``: how many executors the dashboard runs in its own process (default 1;
    0: it only queues runs, for worker processes to execute)."""
    raw = env.get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    if raw not in ("0", "1"):
        raise ConfigError(f"{WORKERS_ENV} must be 0 (the dashboard only queues runs) or 1 (one in-process executor), not {raw!r}; "
                          "start more executors as `python -m pipeline worker` processes")
    return int(raw)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class _Held:
    run_id: int
    task: asyncio.Task[Any] | None = None


@dataclass
class _RunState:
    ctx: RunContext | None
    error: str = ""
    cancelled: bool = False
    keys: dict[int, str] = field(default_factory=dict)


class Worker:
    """Claims prompts from every run open to workers and executes up to ``concurrency`` at once."""

    def __init__(self, engine: Engine, settings: Settings, *, worker_id: str = "", concurrency: int | None = None,
                 parallel_runs: int | None = None) -> None:
        self.engine, self.settings = engine, settings
        self.config = WorkerSettings.from_settings(settings)
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency or self.config.concurrency
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, not {self.concurrency}")
        self.limits = DatabaseLimits(engine, self.worker_id, self.config.lease_s)
        self.health = DatabaseHealth(engine)
        self.parallel_runs = max(1, parallel_runs or settings.runner.parallel_runs)
        self.grace_s, self.cancel_wait_s = settings.runner.stop_grace_s, settings.runner.cancel_wait_s
        self._background: set[asyncio.Task[None]] = set()
        self.completed = 0  # prompts this worker took to an end state
        self._runs: dict[int, _RunState] = {}
        self._held: dict[int, _Held] = {}  # run item id -> what holds it
        self._lost: set[int] = set()  # held items whose lease another worker took over
        self._stop = False
        self._fatal: StorageError | None = None
        self._wake: asyncio.Event | None = None
        self._claiming = asyncio.Lock()
        self._slots: list[asyncio.Task[None]] = []

    # ---- control -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """No new claims; calls in flight get ``stop_grace_s`` to finish, then are cancelled."""
        if self._stop:
            return
        self._stop = True
        log.warning("worker %s stopping: no new prompts; calls in flight get %g s to finish", self.worker_id, self.grace_s)
        if self._wake is not None:
            self._wake.set()
        loop = asyncio.get_running_loop()
        loop.call_later(self.grace_s, self._abort)

    def wake(self) -> None:
        """Look for prompts now rather than at the next poll (a run was just queued)."""
        if self._wake is not None:
            self._wake.set()

    def cancel_run(self, run_id: int) -> None:
        """A run was cancelled: its prompts take no new step; its calls in flight get ``stop_grace_s``, then are cancelled."""
        state = self._runs.get(run_id)
        if state is None or state.cancelled:
            return
        log.warning("run %s: cancel requested", run_id)
        state.cancelled = True
        asyncio.get_running_loop().call_later(self.grace_s, self._abort, run_id)

    def _abort(self, run_id: int | None = None) -> None:
        """Cancel the calls in flight (of one run, or all)."""
        cancelled = []
        for item_id, held in list(self._held.items()):
            if held.task is not None and not held.task.done() and run_id in (None, held.run_id):
                self._lost.add(item_id)  # this worker's own doing: the slot goes on
                held.task.cancel()
                cancelled.append(item_id)
        if cancelled:
            asyncio.get_running_loop().call_later(self.cancel_wait_s, self._give_up, cancelled)

    def _give_up(self, item_ids: list[int]) -> None:
        """Calls that ignore their cancellation are left behind after ``cancel_wait_s``: their prompts
        go back to pending (and their run settles) without waiting for them."""
        stuck = [i for i in item_ids if i in self._held]
        if not stuck:
            return
        log.warning("worker %s: %d prompt(s) did not stop within %g s of being cancelled; left behind",
                    self.worker_id, len(stuck), self.cancel_wait_s)

        left = [(item_id, self._held.pop(item_id).run_id) for item_id in stuck]  # on the loop: no other thread touches _held

        def release() -> None:
            for item_id, run_id in left:
                self._release(item_id, self._stop_cause(run_id))
                self._settle(run_id)

        task = asyncio.get_running_loop().create_task(asyncio.to_thread(release))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def executing(self) -> list[int]:
        """The runs this worker holds prompts of now."""
        return sorted({h.run_id for h in self._held.values()})

    # ---- serving -------------------------------------------------------------------------------
    async def serve(self, *, until_idle: bool = False) -> int:
        """Claim and execute prompts until stopped (``until_idle``: until nothing is left to claim
        and this worker holds nothing); return how many prompts it took to an end state."""
        self._wake = asyncio.Event()
        self._claiming = asyncio.Lock()
        breaker.board.share(self.health)
        log.info("worker %s: claiming prompts, %d at once", self.worker_id, self.concurrency)
        async with shared_connections():
            heartbeat = asyncio.create_task(self._heartbeat())
            self._slots = [asyncio.create_task(self._slot(until_idle)) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*self._slots, return_exceptions=True)
            finally:
                heartbeat.cancel()
                await asyncio.to_thread(self.limits.free_all)
                breaker.board.share(None)
        if self._fatal is not None:
            raise self._fatal
        return self.completed

    async def _slot(self, until_idle: bool) -> None:
        assert self._wake is not None
        idle_wait = self.config.poll_s
        while not self._stop:
            try:
                async with self._claiming:  # one claim at a time: each sees the runs the others just took
                    held_runs = {h.run_id for h in self._held.values()}
                    claim = await asyncio.to_thread(self._claim, held_runs if len(held_runs) >= self.parallel_runs else None)
                    if claim is not None:
                        self._held[claim.item_id] = _Held(claim.run_id, asyncio.current_task())
            except StorageError as e:
                self._storage_failed(e)
                return
            if claim is None:
                if until_idle and not self._held and not await asyncio.to_thread(self._open_work):
                    return  # nothing left anywhere (prompts held by a dead worker count until reclaimed)
                try:
                    await asyncio.wait_for(self._wake.wait(), idle_wait * _jitter.uniform(0.5, 1.0))
                    if not self._stop:
                        self._wake.clear()
                except TimeoutError:
                    pass
                continue
            await self._execute(claim)

    def _open_work(self) -> int:
        with session(self.engine) as s:
            return leases.open_work(s)

    def _claim(self, only: set[int] | None) -> leases.Claim | None:
        """The next prompt; of the runs already held (``only``) once ``[runner] parallel_runs`` are,
        so runs finish one after another rather than all at once at the end."""
        with session(self.engine) as s:
            return leases.claim_next(s, self.worker_id, self.config.lease_s, only_runs=only)

    async def _execute(self, claim: leases.Claim) -> None:
        """Run one claimed prompt; then give it back if unfinished and settle its run, before the
        claim is forgotten (so this worker's next claim already sees the run's new state)."""
        held = self._held[claim.item_id]
        state = self._run_state(claim)
        try:
            if state.ctx is None:
                raise _RunUnusable(state.error)
            status = await PromptJob(state.ctx, claim.item_id).run()
            key = state.keys.get(claim.item_id, f"item {claim.item_id}")
            log.info("worker %s: run %s prompt %s %s", self.worker_id, claim.run_id, key, status)
            if status != "pending":
                self.completed += 1
        except _RunUnusable as e:
            await asyncio.to_thread(self._fail_run, claim.run_id, str(e))
            self._runs.pop(claim.run_id, None)
        except asyncio.CancelledError:
            log.warning("worker %s: run %s item %s cancelled mid-step; the next claim redoes that step",
                        self.worker_id, claim.run_id, claim.item_id)
            if not (self._stop or claim.item_id in self._lost):
                self._forget(claim.item_id, held)
                await asyncio.shield(asyncio.to_thread(self._release, claim.item_id, self._stop_cause(claim.run_id)))
                raise  # cancelled from outside (the loop is closing)
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # cancelled by this worker (stopping, or the lease was lost): the slot goes on
        except StorageError as e:
            self._storage_failed(e, claim.run_id)
        try:
            await asyncio.to_thread(self._release, claim.item_id, self._stop_cause(claim.run_id))
            await asyncio.to_thread(self._settle, claim.run_id)
        except StorageError as e:
            self._storage_failed(e)
        finally:
            self._forget(claim.item_id, held)

    def _forget(self, item_id: int, held: _Held) -> None:
        if self._held.get(item_id) is held:  # not a newer claim of the same prompt (after a give-up and a resume)
            self._held.pop(item_id)
            self._lost.discard(item_id)
        held.task = None

    # ---- a run's shared context --------------------------------------------------------------
    def _run_state(self, claim: leases.Claim) -> _RunState:
        """The run's context, built again when this worker holds none of its other prompts (the run
        may have been resumed since, with a new budget or configuration)."""
        state = self._runs.get(claim.run_id)
        busy = any(h.run_id == claim.run_id for item_id, h in self._held.items() if item_id != claim.item_id)
        if state is None or state.ctx is None or state.cancelled or not busy:
            state = self._runs[claim.run_id] = self._build(claim.run_id)
        return state

    def _build(self, run_id: int) -> _RunState:
        from pipeline.runs.records import prompt_keys

        with session(self.engine) as s:
            run = get_run(s, run_id)
            config = RunConfig.from_dict(run.config)
            refresh_counts(s, run)
            keys = prompt_keys(s, run_id)
            s.commit()
        output_dir = output_dir_of(self.settings, run)
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            removed = remove_leftover_temp_files(output_dir)
            if removed:
                log.info("run %s: removed %d temporary file(s) left by an earlier crash", run_id, removed)
            ctx = RunContext(
                engine=self.engine, settings=self.settings, run=run, config=config,
                providers=self._chain("provider", registry.providers, config.providers, config.routing),
                judges=self._chain("judge", registry.judges, config.judges),
                refiners=self._chain("refiner", registry.refiners, config.refiners),
                output_dir=output_dir, stopping=lambda: self._stop or self._runs[run_id].cancelled,
                budget=Budget(config.budget_usd, run.cost_usd), on_budget=lambda reason: self._pause(run_id, reason),
                stop_cause=lambda: self._stop_cause(run_id),
            )
        except OSError as e:
            return _RunState(None, f"the output folder {output_dir} cannot be used: {e.strerror or e}")
        except (DarkroomError, ValueError) as e:
            return _RunState(None, str(e))
        for chain in (ctx.providers, ctx.judges, ctx.refiners):
            for member in chain.members:
                if self._breaker_moved not in member.breaker.listeners:
                    member.breaker.listeners.append(self._breaker_moved)
        return _RunState(ctx, keys=keys)

    def _chain(self, role: str, reg: registry.Registry, names: list[str], mode: str = "fallback") -> ServiceChain:  # type: ignore[type-arg]
        members = []
        for name in names:
            component = reg.create(name, self.settings)
            # A networked service's limits are the service's, so all workers share them; a local
            # component (the offline stack) runs on this machine's cores: its limits stay this process's.
            remote = getattr(component, "timeout_s", None) is not None
            members.append(member_for(self.settings, component, self.limits if remote else None))
        return ServiceChain(role, members, mode=mode)

    def _stop_cause(self, run_id: int) -> str:
        state = self._runs.get(run_id)
        return "cancelled" if state is not None and state.cancelled else "interrupted"

    # ---- database writes ---------------------------------------------------------------------
    def _release(self, item_id: int, reason: str) -> None:
        with session(self.engine) as s:
            leases.release(s, self.worker_id, item_id, reason)

    def _settle(self, run_id: int) -> None:
        with session(self.engine) as s:
            status = leases.settle(s, run_id)
        if status in ("completed", "cancelled"):
            log.info("run %s %s", run_id, status)

    def _fail_run(self, run_id: int, error: str) -> None:
        log.error("run %s cannot be executed: %s", run_id, error)
        with session(self.engine) as s:
            s.execute(update(Run).where(col(Run.id) == run_id, col(Run.owner) == "", col(Run.status).in_(leases.CLAIMABLE_RUNS))
                      .values(status="failed", error=error[:2000], finished_at=utcnow()))
            s.commit()

    def _pause(self, run_id: int, reason: str) -> None:
        """The run's budget is spent, or the disk is full: no worker claims its prompts until it is resumed."""
        log.warning("run %s: pausing: %s", run_id, reason)
        with session(self.engine) as s:
            s.execute(update(Run).where(col(Run.id) == run_id, col(Run.owner) == "", col(Run.status).in_(leases.CLAIMABLE_RUNS))
                      .values(status="paused", error=reason[:2000], finished_at=utcnow()))
            s.commit()

    def _storage_failed(self, e: StorageError, run_id: int | None = None) -> None:
        if isinstance(e, DiskFull) and run_id is not None:
            self._pause(run_id, str(e))
            return
        log.error("worker %s: the database or data folder cannot be used: %s", self.worker_id, e)
        if self._fatal is None:
            self._fatal = e
        self._stop = True

    def _breaker_moved(self, t: Transition) -> None:
        with session(self.engine) as s:
            s.add(BreakerEvent(service=t.service, state=t.state, reason=t.reason[:500], failures=t.failures))
            s.commit()

    # ---- the heartbeat -------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            try:
                lost, cancelled, costs = await asyncio.to_thread(self._beat, dict(self._held))
            except StorageError as e:
                log.warning("worker %s: heartbeat failed: %s", self.worker_id, e)
                continue
            for item_id in lost:
                held = self._held.get(item_id)
                if held is not None and held.task is not None:
                    self._lost.add(item_id)
                    log.error("worker %s: lost its lease on item %s (stalled past lease_s); stopping that prompt",
                              self.worker_id, item_id)
                    held.task.cancel()
            for run_id in cancelled:
                self.cancel_run(run_id)
            for run_id, cost in costs.items():  # what the other workers spent on the run counts against its budget here too
                state = self._runs.get(run_id)
                if state is not None and state.ctx is not None:
                    state.ctx.budget.spent_usd = max(state.ctx.budget.spent_usd, cost)

    def _beat(self, held: dict[int, _Held]) -> tuple[set[int], set[int], dict[int, float]]:
        """Renew leases and slots; refresh the held runs' counts and heartbeat; which leases were
        lost, which held runs are being cancelled, and what each has cost so far (all workers)."""
        self.limits.renew()
        self.limits.count_peers()
        run_ids = sorted({h.run_id for h in held.values()})
        with session(self.engine) as s:
            lost = leases.renew(s, self.worker_id, list(held), self.config.lease_s)
            cancelled: set[int] = set()
            costs: dict[int, float] = {}
            for run_id in run_ids:
                # Locked and read afresh: a run another worker has just ended (its final counts in the same
                # commit) is seen ended here, and never gets this beat's older counts written over them.
                run = s.exec(select(Run).where(col(Run.id) == run_id).with_for_update()
                             .execution_options(populate_existing=True)).first()
                if run is None:
                    continue
                if run.cancel_requested:
                    cancelled.add(run_id)
                if run.owner == "" and run.status == "running":
                    run.heartbeat_at = utcnow()
                    refresh_counts(s, run)
                    costs[run_id] = run.cost_usd
            s.commit()
        return lost, cancelled, costs


class _RunUnusable(Exception):
    """The run's configuration or output folder cannot be used: the run fails with this message."""


# ---- the command ---------------------------------------------------------------------------------
def run_worker(engine: Engine, settings: Settings, *, worker_id: str = "", concurrency: int | None = None,
               until_idle: bool = False) -> int:
    """Serve until SIGTERM / Ctrl-C (a second one cancels the calls in flight at once); return the
    number of prompts this worker finished."""
    worker = Worker(engine, settings, worker_id=worker_id, concurrency=concurrency)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stops = 0

        def on_signal() -> None:
            nonlocal stops
            stops += 1
            if stops == 1:
                worker.request_stop()
            else:
                worker._abort()

        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        return await worker.serve(until_idle=until_idle)

    return asyncio.run(main())



def add_parser(sub: Any) -> None:
    """``python -m pipeline worker``'s arguments (``sub``: the CLI's subparsers)."""
    worker = sub.add_parser("worker", help="claim prompts of queued runs from the shared database and execute them "
                                           "(start N on any machines; stop with Ctrl-C or SIGTERM)")
    worker.add_argument("--concurrency", type=int, help="prompts this worker executes at once (default: [workers] concurrency)")
    worker.add_argument("--id", default="", help="this worker's name in leases and logs (default: host:pid:random)")
    worker.add_argument("--until-idle", action="store_true", help="exit once no prompt is left to claim (scripts, benchmarks)")


def cmd_worker(args: Any, settings: Settings, out: TextIO) -> int:
    from pipeline.logs import LogFiles, setup_logging
    from pipeline.store.db import open_database

    if args.concurrency is not None and args.concurrency < 1:
        raise InputError(f"{args.concurrency} must be at least 1", field="concurrency")
    setup_logging(LogFiles.from_settings(settings), console_level=logging.INFO)
    load_run_modules()  # before the first claim: its first image does not wait for them
    engine = open_database(settings)
    try:
        if engine.dialect.name == "sqlite":
            log.warning("worker on SQLite: fine on one machine, but SQLite serialises every write; "
                        "for several workers set DARKROOM_DATABASE_URL to a PostgreSQL database")
        done = run_worker(engine, settings, worker_id=args.id, concurrency=args.concurrency, until_idle=args.until_idle)
    finally:
        engine.dispose()
    print(f"worker stopped: {done} prompt(s) finished", file=out)
    return 0
