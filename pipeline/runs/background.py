"""The dashboard's background runner: one daemon thread per server process executing queued runs.

The thread owns its asyncio loop and executes runs one after another (a run's prompts run
concurrently inside :class:`~pipeline.runs.runner.RunExecutor`). It talks to the pages only through
the database: a page queues a run or asks for a cancel by writing rows, and the thread claims
queued runs atomically (:func:`~pipeline.runs.records.claim_next_queued`), so several processes sharing
one database never execute the same run. HTTP clients and semaphores are created inside
``execute``, on this thread's loop. Nothing here imports streamlit.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from sqlalchemy.engine import Engine

from pipeline.config import Settings
from pipeline.logs import setup_logging
from pipeline.runs.records import claim_next_queued, get_run, recover_orphans, request_cancel
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import session
from pipeline.store.models import Run, utcnow

log = logging.getLogger("pipeline.runs.background")


class BackgroundRunner:
    def __init__(self, engine: Engine, settings: Settings, *, poll_seconds: float = 1.0) -> None:
        self.engine = engine
        self.settings = settings
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: RunExecutor | None = None

    # ---- control (any thread) -----------------------------------------------------------------
    def start(self, *, log_to_file: bool = True) -> list[int]:
        """Start the thread once; first mark runs left ``running`` by a dead process ``interrupted``."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return []
            if log_to_file:
                setup_logging(self.settings.logs_dir, console_level=logging.WARNING)
            with session(self.engine) as s:
                recovered = recover_orphans(s)
                s.commit()
            for run_id in recovered:
                log.warning("run %s was left running by a process that is gone; marked interrupted", run_id)
            self._closing = False
            self._thread = threading.Thread(target=self._thread_main, name="darkroom-runner", daemon=True)
            self._thread.start()
            return recovered

    def wake(self) -> None:
        """Look for queued runs now rather than at the next poll."""
        self._wake.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def current_run_id(self) -> int | None:
        executor = self._executor
        return executor.run_id if executor else None

    def cancel(self, run_id: int) -> str:
        """Cancel a run: a queued one at once; a running one takes no new work and finishes its
        in-flight steps. Returns the run's status after the request."""
        with session(self.engine) as s:
            run = request_cancel(s, run_id)
            s.commit()
            status = run.status
        executor, loop = self._executor, self._loop
        if executor is not None and executor.run_id == run_id and loop is not None:
            loop.call_soon_threadsafe(executor.cancel)
        return status

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread: the current run finishes its in-flight steps and is left ``interrupted``."""
        self._closing = True
        executor, loop = self._executor, self._loop
        if executor is not None and loop is not None and loop.is_running():
            loop.call_soon_threadsafe(executor.request_stop)
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ---- the thread ------------------------------------------------------------------------------
    def _thread_main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            while not self._closing:
                with session(self.engine) as s:
                    run_id = claim_next_queued(s)
                if run_id is None:
                    await self._idle()
                    continue
                await self._execute(run_id)
        finally:
            self._loop = None

    async def _idle(self) -> None:
        waited = 0.0
        while waited < self.poll_seconds and not self._wake.is_set() and not self._closing:
            await asyncio.sleep(0.05)
            waited += 0.05
        self._wake.clear()

    async def _execute(self, run_id: int) -> None:
        executor = RunExecutor(self.engine, self.settings, run_id)
        self._executor = executor
        try:
            if self._closing:
                executor.request_stop()
            outcome = await executor.execute()
            log.info("run %s ended %s", run_id, outcome.status)
        except Exception as e:  # a bug or a lost database must not kill the thread: record it on the run
            log.exception("run %s failed", run_id)
            with session(self.engine) as s:
                run = s.get(Run, run_id) or get_run(s, run_id)
                run.status, run.error, run.owner, run.finished_at = "failed", f"{type(e).__name__}: {e}", "", utcnow()
                s.commit()
        finally:
            self._executor = None
