"""Worker processes (``python -m pipeline worker``) sharing runs through PostgreSQL.

Real processes against a real server and a loopback emulator of fal's queue API: several workers
share one run prompt by prompt; one is killed with -9 mid-run and its prompts are reclaimed when
their leases run out; every prompt completes and no finished step is paid for twice; a provider's
``max_concurrency`` holds across all workers together. Those run in the PostgreSQL pass
(``DARKROOM_TEST_DATABASE=postgresql``; skipped on SQLite). One worker, and the dashboard's
queue-only mode, are checked on both databases.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.config import Settings
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, ProviderCall, ProviderSlot, Run, RunItem
from tests.conftest import PYTHON, ROOT, create_run, make_prompts, run_cli, subprocess_env
from tests.emulators import running
from tests.emulators.fal_capacity import KEY, CapacityFal
from tests.fakes import FakeProvider

WORKER_CONFIG = """
[workers]
lease_s = {lease_s}
heartbeat_s = 0.5
poll_s = 0.2
[providers.fal]
poll_initial_s = 0.02
poll_max_s = 0.05
[providers.fal.limits]
max_concurrency = {max_concurrency}
"""


@pytest.fixture
def fal() -> Iterator[CapacityFal]:
    with running(CapacityFal(slots=64, median_s=0.4)) as emulator:
        yield emulator  # type: ignore[misc]


def start_workers(tmp_path: Path, data_dir: Path, fal: CapacityFal, n: int, *, concurrency: int, max_concurrency: int,
                  lease_s: float) -> list[subprocess.Popen[bytes]]:
    config = tmp_path / "workers.toml"
    config.write_text(WORKER_CONFIG.format(max_concurrency=max_concurrency, lease_s=lease_s))
    env = subprocess_env(data_dir, DARKROOM_CONFIG=str(config), FAL_KEY=KEY, FAL_BASE_URL=fal.url)
    procs = []
    for i in range(n):
        with (tmp_path / f"w{i}.log").open("wb") as log:  # the worker keeps its own copy of the file
            procs.append(subprocess.Popen([PYTHON, "-m", "pipeline", "worker", "--id", f"w{i}", "--concurrency", str(concurrency),
                                           "--until-idle"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]], tmp_path: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for i, proc in enumerate(procs):
        try:
            proc.wait(max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"worker w{i} did not finish:\n" + (tmp_path / f"w{i}.log").read_text()[-3000:]) from None


def queue_run(settings: Settings, tmp_path: Path, n: int) -> int:
    engine = open_database(settings)
    try:
        return create_run(engine, settings, make_prompts(n), tmp_path, providers=["fal"], iterations=2)
    finally:
        engine.dispose()


def test_a_killed_workers_prompts_are_taken_over_and_no_finished_step_is_paid_twice(
        pg_url: str, settings: Settings, fal: CapacityFal, tmp_path: Path, isolated_data_dir: Path) -> None:
    run_id = queue_run(settings, tmp_path, 16)
    # a short lease, so the killed worker's prompts come back within seconds
    procs = start_workers(tmp_path, isolated_data_dir, fal, 3, concurrency=3, max_concurrency=16, lease_s=3.0)
    engine = open_database(settings)
    try:
        victim: list[int] = []
        deadline = time.monotonic() + 60
        while not victim:  # kill w0 while it holds prompts mid-step (after some of its steps committed)
            assert time.monotonic() < deadline, "w0 never held a prompt"
            with session(engine) as s:
                done = len(s.exec(select(Iteration.id).where(Iteration.status == "ok")).all())
                held = s.exec(select(RunItem.id).where(RunItem.lease_owner == "w0", RunItem.status == "running")).all()
            if done >= 4 and held:
                os.kill(procs[0].pid, signal.SIGKILL)
                victim = [i for i in held if i is not None]
            time.sleep(0.05)
        procs[0].wait(10)
        wait_all(procs[1:], tmp_path)

        with session(engine) as s:
            run = s.get_one(Run, run_id)
            items = s.exec(select(RunItem).where(RunItem.run_id == run_id)).all()
            iterations = s.exec(select(Iteration)).all()
            calls = s.exec(select(ProviderCall).where(ProviderCall.provider == "fal", ProviderCall.outcome == "ok")).all()
        assert run.status == "completed" and run.completed == 16
        assert all(item.status == "completed" for item in items)
        taken_over = [item for item in items if item.id in victim]
        assert taken_over and all(item.lease_owner in ("w1", "w2") for item in taken_over)  # the survivors finished w0's prompts
        # every finished step was paid once: one submission per stored iteration, never two
        assert len(iterations) == 32 and all(it.status == "ok" and it.request_id for it in iterations)
        submitted = fal.summary()["request_ids"]
        stored = [it.request_id for it in iterations]
        assert len(set(stored)) == 32 and set(stored) <= set(submitted)  # type: ignore[arg-type]
        # what w0 had submitted but not yet recorded when it died is the only work paid for and lost
        assert len(submitted) - 32 <= 3  # type: ignore[arg-type]
        assert len({c.step_key for c in calls}) == len(calls) == 32
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        engine.dispose()


def test_a_providers_max_concurrency_holds_across_all_workers(
        pg_url: str, settings: Settings, fal: CapacityFal, tmp_path: Path, isolated_data_dir: Path) -> None:
    run_id = queue_run(settings, tmp_path, 12)
    # a long lease: on a loaded machine a worker may stall for seconds, and must not lose its slot for it
    procs = start_workers(tmp_path, isolated_data_dir, fal, 3, concurrency=4, max_concurrency=2, lease_s=30.0)
    wait_all(procs, tmp_path)
    engine = open_database(settings)
    try:
        with session(engine) as s:
            assert s.get_one(Run, run_id).status == "completed"
            owners = {item.lease_owner for item in s.exec(select(RunItem).where(RunItem.run_id == run_id))}
            slots = s.exec(select(ProviderSlot).where(ProviderSlot.service == "providers/fal")).all()
    finally:
        engine.dispose()
    assert len(owners) >= 2  # the run was shared, prompt by prompt
    summary = fal.summary()
    # 3 workers × 4 prompts at once would be up to 12 calls; the shared limit keeps it at 2
    assert summary["peak"] == 2 and summary["rejected"] == 0
    assert len(slots) == 2 and all(slot.holder == "" for slot in slots)  # every worker gave its slots back


def test_one_worker_executes_queued_runs_on_either_database(settings: Settings, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = create_run(engine, settings, make_prompts(3), tmp_path, providers=["fake"], iterations=2)
    second = create_run(engine, settings, make_prompts(2), tmp_path, providers=["fake"], iterations=1)
    result = run_cli("worker", "--concurrency", "2", "--id", "solo", "--until-idle")
    assert result.code == 0, result.err
    assert "5 prompt(s) finished" in result.out
    with session(engine) as s:
        runs = [s.get_one(Run, first), s.get_one(Run, second)]
        items = s.exec(select(RunItem)).all()
    assert [(r.status, r.completed) for r in runs] == [("completed", 3), ("completed", 2)]
    assert {i.lease_owner for i in items} == {"solo"}
    assert len(FakeProvider.history) == 3 * 2 + 2  # each generation requested once


def test_runs_the_cli_executes_are_never_claimed_by_a_worker(settings: Settings, engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.runs.leases import claim_next

    owned = create_run(engine, settings, make_prompts(2), tmp_path, providers=["fake"], iterations=1)
    with session(engine) as s:
        s.get_one(Run, owned).owner = "elsewhere:123"  # what `python -m pipeline run` writes: that process executes it
        s.commit()
        assert claim_next(s, "w", 30.0) is None


def test_with_darkroom_workers_0_the_dashboard_only_queues(settings: Settings, engine, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.errors import ConfigError
    from pipeline.runs.background import BackgroundRunner

    monkeypatch.setenv("DARKROOM_WORKERS", "0")
    run_id = create_run(engine, settings, make_prompts(1), tmp_path, providers=["fake"], iterations=1)
    runner = BackgroundRunner(engine, settings, poll_seconds=0.05)
    runner.start(log_to_file=False)
    time.sleep(0.5)
    with session(engine) as s:
        assert s.get_one(Run, run_id).status == "queued"
    assert runner.alive and runner.executing == [] and not FakeProvider.history
    runner.stop()
    monkeypatch.setenv("DARKROOM_WORKERS", "4")
    with pytest.raises(ConfigError, match="DARKROOM_WORKERS must be 0 .* or 1 .*python -m pipeline worker"):
        BackgroundRunner(engine, settings)


def test_a_breaker_opened_in_one_process_refuses_in_the_others_until_its_probe_succeeds(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    from pipeline.errors import ProviderError
    from pipeline.resilience.breaker import BreakerSettings, CircuitBreaker
    from pipeline.runs.shared_limits import DatabaseHealth

    rules = BreakerSettings(failure_threshold=2, window=10, min_calls=10, failure_rate=0.9, cooldown_s=5.0)
    clock = [0.0]
    here = CircuitBreaker("providers/fal", rules, clock=lambda: clock[0], shared=DatabaseHealth(engine))
    there = CircuitBreaker("providers/fal", rules, shared=DatabaseHealth(engine))  # another process's view of the same service
    assert there.allow()
    for _ in range(2):
        here.record_failure(ProviderError("upstream is down", kind="server"))
    assert here.state == "open"
    time.sleep(1.1)  # the other process's view may be a second stale
    assert not there.allow() and there.is_open()  # it saw no failure itself, yet refuses
    clock[0] += 5.0  # the opener's cool-down is over
    assert here.allow() and here.state == "half_open"  # the opener sends the one probe...
    time.sleep(1.1)  # (past the other's cache)
    assert not there.allow()  # ...while the others wait for it
    here.record_success()
    time.sleep(1.1)
    assert there.allow() and not there.is_open()


def test_shared_slots_hold_a_limit_across_processes_and_come_back_when_a_holder_dies(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from pipeline.runs.shared_limits import DatabaseLimits

    async def scenario() -> None:
        a, b = DatabaseLimits(engine, "worker-a", lease_s=30.0), DatabaseLimits(engine, "worker-b", lease_s=0.5)
        first = await a.acquire("providers/fal", 2, 0)
        await b.acquire("providers/fal", 2, 0)  # b then "dies" holding its slot (never releases, never renews)
        third = asyncio.create_task(a.acquire("providers/fal", 2, 0))
        await asyncio.sleep(0.2)
        assert not third.done()  # both slots are held, by two different holders
        token = await asyncio.wait_for(third, 5)  # b's lease runs out: its slot comes back
        await a.release(first)
        await a.release(token)
        fourth = await asyncio.wait_for(a.acquire("providers/fal", 2, 0), 2)
        await a.release(fourth)

    asyncio.run(scenario())


def test_a_process_hands_slots_on_to_its_own_calls_up_to_its_share_and_gives_the_rest_back(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    """Two processes sharing a service of 4 slots: a slot goes straight to the same process's next call
    while that process holds no more than its half, and back to the table (for the other) above it."""
    import asyncio

    from sqlalchemy import event

    from pipeline.runs.shared_limits import DatabaseLimits

    def holders() -> list[str]:
        with session(engine) as s:
            return sorted(slot.holder for slot in s.exec(select(ProviderSlot).where(ProviderSlot.service == "providers/fal")))

    async def scenario() -> None:
        a, b = DatabaseLimits(engine, "worker-a", lease_s=30.0), DatabaseLimits(engine, "worker-b", lease_s=30.0)
        a.peers = b.peers = 2
        held = [await a.acquire("providers/fal", 4, 0) for _ in range(4)]  # b wants none yet: a may take all four
        assert holders() == ["worker-a"] * 4
        b_waits = [asyncio.create_task(b.acquire("providers/fal", 4, 0)) for _ in range(2)]
        await asyncio.sleep(0.1)
        await a.release(held.pop())  # a holds 4, above its share of 2: the slot goes back to the table, and b takes it
        await a.release(held.pop())
        b_held = [await asyncio.wait_for(t, 5) for t in b_waits]
        assert holders() == ["worker-a"] * 2 + ["worker-b"] * 2
        a_waits = asyncio.create_task(a.acquire("providers/fal", 4, 0))
        await asyncio.sleep(0.1)
        assert not a_waits.done()  # every slot is held
        statements: list[str] = []
        listen = lambda conn, cursor, statement, *rest: statements.append(statement)  # noqa: E731
        event.listen(engine, "before_cursor_execute", listen)
        a.release_soon(held.pop())  # a holds its share: the slot goes to a's own waiting call, the table untouched
        handed = await asyncio.wait_for(a_waits, 1)
        event.remove(engine, "before_cursor_execute", listen)
        assert not [q for q in statements if "provider_slot" in q]
        assert holders() == ["worker-a"] * 2 + ["worker-b"] * 2
        for limits, token in [(a, handed), (a, held.pop()), *((b, t) for t in b_held)]:
            await limits.release(token)  # nobody waits: every slot back to the table
        assert holders() == [""] * 4

    asyncio.run(scenario())


def test_a_call_waiting_for_a_shared_slot_fails_with_the_database_s_error_instead_of_waiting_forever(settings: Settings, engine) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from sqlalchemy import text

    from pipeline.runs.shared_limits import DatabaseLimits

    with engine.begin() as c:
        c.execute(text("DROP TABLE provider_slot"))  # the table is gone: every claim fails

    async def scenario() -> None:
        limits = DatabaseLimits(engine, "worker-a", lease_s=30.0)
        calls = [asyncio.create_task(limits.acquire("providers/fal", 4, 0)) for _ in range(3)]
        done, pending = await asyncio.wait(calls, timeout=10)
        assert not pending  # every waiting call learns of it
        for call in done:
            error = call.exception()
            assert error is not None and "provider_slot" in str(error)

    asyncio.run(scenario())
