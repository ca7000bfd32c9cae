"""The dashboard's background runner: one daemon thread per server process executing queued runs.

The thread owns its asyncio loop and executes up to ``[runner] parallel_runs`` runs at once,
each as its own task (a run's prompts run concurrently inside
:class:`~pipeline.runs.runner.RunExecutor`), so one stuck run never holds up the runs queued
behind it. It talks to the pages only through the database: a page queues a run or asks for a
cancel by writing rows (:mod:`pipeline.runs.control`), and the thread claims queued runs
atomically (:func:`~pipeline.runs.records.claim_next_queued`), so several processes sharing one
database never execute the same run. A cancel also reaches the run's executor at once, which
cancels its calls in flight after ``stop_grace_s``. HTTP clients and semaphores are created
inside ``execute``, on this thread's loop. Nothing here imports streamlit.

On PostgreSQL the thread is a :class:`~pipeline.runs.worker.Worker` instead: it claims prompts,
not whole runs, exactly as ``python -m pipeline worker`` processes do, so it shares the runs
with them. ``DARKROOM_WORKERS=0`` starts no thread at all: the dashboard and the API only queue
runs, for worker processes to execute.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy.engine import Engine

from pipeline.config import Settings
from pipeline.logs import LogFiles, setup_logging
from pipeline.redaction import redact
from pipeline.runs import control
from pipeline.runs.records import claim_next_queued, get_run, this_owner
from pipeline.runs.runner import RunExecutor
from pipeline.runs.worker import Worker, in_process_executors
from pipeline.store.db import session
from pipeline.store.models import Run, utcnow

log = logging.getLogger("pipeline.runs.background")


class BackgroundRunner:
    def __init__(self, engine: Engine, settings: Settings, *, poll_seconds: float = 0.25, parallel_runs: int | None = None) -> None:
        """``poll_seconds``: how often the idle thread looks for runs queued by another process (the API
        server, ``python -m pipeline`` with ``DARKROOM_WORKERS=0``); one indexed query. A launch from
        this process calls :meth:`wake` and is picked up at once."""
        self.engine = engine
        self.settings = settings
        self.poll_seconds = poll_seconds
        self.parallel_runs = max(1, parallel_runs if parallel_runs is not None else settings.runner.parallel_runs)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executors: dict[int, RunExecutor] = {}
        self.queue_only = in_process_executors() == 0  # DARKROOM_WORKERS=0: worker processes execute the runs
        self.claims_prompts = engine.dialect.name == "postgresql"  # a shared database: claim prompts like the workers
        self._worker: Worker | None = None

    # ---- control (any thread) -----------------------------------------------------------------
    def start(self, *, log_to_file: bool = True) -> list[int]:
        """Start the thread once; first mark runs left ``running`` by a dead process ``interrupted``."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return []
            if self.queue_only:
                log.info("DARKROOM_WORKERS=0: runs are queued here and executed by `python -m pipeline worker` processes")
                return []
            if log_to_file:
                setup_logging(LogFiles.from_settings(self.settings), console_level=logging.WARNING)
            recovered = control.recover(self.engine)
            for run_id in recovered:
                log.warning("run %s was left running by a process that is gone; marked interrupted", run_id)
            self._closing = False
            self._thread = threading.Thread(target=self._thread_main, name="darkroom-runner", daemon=True)
            self._thread.start()
            return recovered

    def wake(self) -> None:
        """Look for queued runs now rather than at the next poll."""
        self._wake.set()
        worker, loop = self._worker, self._loop
        if worker is not None and loop is not None:
            loop.call_soon_threadsafe(worker.wake)

    @property
    def alive(self) -> bool:
        """The thread runs, or none was meant to (``DARKROOM_WORKERS=0``: queue only)."""
        return self.queue_only or (self._thread is not None and self._thread.is_alive())

    @property
    def executing(self) -> list[int]:
        """The ids of the runs this thread is executing now."""
        if self._worker is not None:
            return self._worker.executing
        return sorted(self._executors)

    def cancel(self, run_id: int) -> str:
        """Cancel a run: a queued one at once; a running one takes no new work, and its calls in
        flight are cancelled after the grace period. Returns the run's status after the request."""
        status = control.cancel(self.engine, run_id)
        executor, loop = self._executors.get(run_id), self._loop
        if executor is not None and loop is not None:
            loop.call_soon_threadsafe(executor.cancel)
        if self._worker is not None and loop is not None:  # other workers holding its prompts notice at their heartbeat
            loop.call_soon_threadsafe(self._worker.cancel_run, run_id)
        return status

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread: each run it executes stops (in-flight calls get the grace period, then
        are cancelled) and is left ``interrupted``."""
        self._closing = True
        loop = self._loop
        if loop is not None and loop.is_running():
            for executor in list(self._executors.values()):
                loop.call_soon_threadsafe(executor.request_stop)
            if self._worker is not None:
                loop.call_soon_threadsafe(self._worker.request_stop)
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ---- the thread ------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.claims_prompts:
            await self._serve_as_worker()
            return
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not self._closing:
                self._start_queued(tasks)
                await self._idle()
            for executor in list(self._executors.values()):
                executor.request_stop()
            if tasks:
                await asyncio.wait(tasks)  # each ends within its grace period and cancel wait
        finally:
            self._loop = None

    async def _serve_as_worker(self) -> None:
        """PostgreSQL: claim prompts of any open run, alongside the worker processes."""
        self._worker = Worker(self.engine, self.settings, worker_id=f"{this_owner()}:dashboard", parallel_runs=self.parallel_runs)
        task = asyncio.create_task(self._worker.serve())
        try:
            while not self._closing and not task.done():
                await self._idle()
            self._worker.request_stop()
            await task
        except Exception:  # a lost database: the thread ends; the runs stay resumable by any worker
            log.exception("the in-process worker stopped")
        finally:
            self._loop = None

    def _start_queued(self, tasks: set[asyncio.Task[None]]) -> None:
        """Claim queued runs while there is a free slot; each runs as its own task."""
        while len(self._executors) < self.parallel_runs and not self._closing:
            try:
                with session(self.engine) as s:
                    run_id = claim_next_queued(s)
            except Exception:  # a locked or lost database: try again at the next poll
                log.exception("could not look for queued runs")
                return
            if run_id is None:
                return
            executor = RunExecutor(self.engine, self.settings, run_id)
            self._executors[run_id] = executor
            task = asyncio.create_task(self._execute(executor), name=f"run-{run_id}")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _idle(self) -> None:
        waited = 0.0
        while waited < self.poll_seconds and not self._wake.is_set() and not self._closing:
            await asyncio.sleep(0.05)
            waited += 0.05
        self._wake.clear()

    async def _execute(self, executor: RunExecutor) -> None:
        run_id = executor.run_id
        try:
            if self._closing:
                executor.request_stop()
            outcome = await executor.execute()
            log.info("run %s ended %s", run_id, outcome.outcome)
        except Exception as e:  # a bug or a lost database must not kill the thread: record it on the run
            log.exception("run %s failed", run_id)
            with session(self.engine) as s:
                run = s.get(Run, run_id) or get_run(s, run_id)
                run.status, run.error, run.owner, run.finished_at = "failed", redact(f"{type(e).__name__}: {e}"), "", utcnow()
                s.commit()
        finally:
            self._executors.pop(run_id, None)
            self._wake.set()  # a slot is free: look for the next queued run now
