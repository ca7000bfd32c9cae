"""The dashboard's background runner: queued runs (several at once), cancel, resume, recovery."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.config import Settings
from pipeline.runs.background import BackgroundRunner
from pipeline.runs.records import claim_for_resume, claim_next_queued, get_run
from pipeline.store.db import session
from pipeline.store.models import ProviderCall, Run, RunItem, utcnow
from tests.conftest import create_run, make_prompts
from tests.fakes import FakeProvider


@pytest.fixture
def runner(engine, settings) -> Iterator[BackgroundRunner]:  # type: ignore[no-untyped-def]
    r = BackgroundRunner(engine, settings, poll_seconds=0.1)
    yield r
    r.stop()


def wait_for(engine, run_id: int, statuses: tuple[str, ...], timeout: float = 60) -> Run:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        with session(engine) as s:
            run = get_run(s, run_id)
        if run.status in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} still {run.status}"
        time.sleep(0.05)


@pytest.fixture
def quick_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose stopping runs cancel their calls in flight after half a second."""
    override = tmp_path / "override.toml"
    override.write_text("[runner]\nstop_grace_s = 0.5\ncancel_wait_s = 0.5\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(override))
    return Settings.from_env()


def wait_until(predicate, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_with_one_slot_queued_runs_execute_one_after_another(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = create_run(engine, settings, make_prompts(3), tmp_path, iterations=1)
    second = create_run(engine, settings, make_prompts(2), tmp_path, iterations=1)
    runner = BackgroundRunner(engine, settings, poll_seconds=0.1, parallel_runs=1)
    try:
        runner.start(log_to_file=False)
        a = wait_for(engine, first, ("completed",))
        b = wait_for(engine, second, ("completed",))
        assert (a.completed, b.completed) == (3, 2)
        assert b.started_at >= a.finished_at
        assert runner.alive
    finally:
        runner.stop()


def test_a_stuck_run_never_holds_up_the_runs_queued_behind_it_and_cancel_ends_its_calls(
        engine, quick_stop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    FakeProvider.delays = {"p000": 600.0}  # a call that never comes back
    stuck = create_run(engine, quick_stop, make_prompts(1), tmp_path, providers=["fake"], iterations=1)
    behind = create_run(engine, quick_stop, make_prompts(2), tmp_path, iterations=1)
    runner = BackgroundRunner(engine, quick_stop, poll_seconds=0.1)  # parallel_runs from defaults.toml
    try:
        runner.start(log_to_file=False)
        assert wait_for(engine, behind, ("completed",), timeout=30).completed == 2
        with session(engine) as s:
            assert get_run(s, stuck).status == "running"
        t0 = time.monotonic()
        runner.cancel(stuck)
        run = wait_for(engine, stuck, ("cancelled",), timeout=15)
        assert time.monotonic() - t0 < 4, "Cancel must end the calls in flight within a few seconds"
        with session(engine) as s:
            calls = s.exec(select(ProviderCall).where(ProviderCall.run_id == stuck)).all()
            items = s.exec(select(RunItem).where(RunItem.run_id == stuck)).all()
        assert [(c.provider, c.operation, c.outcome, c.error_kind) for c in calls] == [("fake", "generate", "cancelled", "cancelled")]
        assert [i.status for i in items] == ["pending"]  # resumable: the cut-off step is redone
        assert run.completed == 0 and runner.executing == []
    finally:
        runner.stop()


def test_cancel_never_waits_for_a_call_that_ignores_its_cancellation(engine, quick_stop, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    FakeProvider.stubborn = {"p000": 5.0}  # swallows its cancellation: the call lasts 5 s whatever happens
    stuck = create_run(engine, quick_stop, make_prompts(1), tmp_path, providers=["fake"], iterations=1)
    behind = create_run(engine, quick_stop, make_prompts(1), tmp_path, iterations=1)
    runner = BackgroundRunner(engine, quick_stop, poll_seconds=0.1, parallel_runs=1)  # one slot: the queue waits on the stuck run
    try:
        runner.start(log_to_file=False)
        wait_until(lambda: FakeProvider.history)
        t0 = time.monotonic()
        runner.cancel(stuck)
        wait_for(engine, stuck, ("cancelled",), timeout=15)
        done = wait_for(engine, behind, ("completed",), timeout=15)
        assert time.monotonic() - t0 < 3.5, "the runner moved on without waiting for the stubborn call to end"
        assert done.completed == 1
    finally:
        runner.stop()


def test_queued_runs_execute_several_at_once(runner, engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = create_run(engine, settings, make_prompts(3), tmp_path, iterations=1)
    second = create_run(engine, settings, make_prompts(2), tmp_path, iterations=1)
    runner.start(log_to_file=False)
    a = wait_for(engine, first, ("completed",))
    b = wait_for(engine, second, ("completed",))
    assert (a.completed, b.completed) == (3, 2)
    assert runner.alive


def test_cancel_finishes_in_flight_steps_and_resume_repeats_none(runner, engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    FakeProvider.delays = {f"p{i:03d}": 0.15 for i in range(8)}
    run_id = create_run(engine, settings, make_prompts(8), tmp_path, providers=["fake"], iterations=1, concurrency=1)
    runner.start(log_to_file=False)
    deadline = time.monotonic() + 30
    while True:
        with session(engine) as s:
            done = len(s.exec(select(RunItem).where(RunItem.run_id == run_id, RunItem.status == "completed")).all())
        if done >= 1:
            break
        assert time.monotonic() < deadline
        time.sleep(0.02)
    runner.cancel(run_id)
    run = wait_for(engine, run_id, ("cancelled",))
    with session(engine) as s:
        statuses = Counter(i.status for i in s.exec(select(RunItem).where(RunItem.run_id == run_id)))
    assert statuses["completed"] < 8 and statuses["running"] == 0
    assert statuses["completed"] + statuses["pending"] == 8

    with session(engine) as s:
        claim_for_resume(s, get_run(s, run_id))
        s.commit()
    runner.wake()
    run = wait_for(engine, run_id, ("completed",))
    assert run.completed == 8
    generated = Counter(r.prompt_id for r in FakeProvider.history)
    assert set(generated.values()) == {1}, "a finished prompt was generated again"


def test_cancel_of_a_queued_run_takes_effect_at_once(runner, engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = create_run(engine, settings, make_prompts(2), tmp_path)
    assert runner.cancel(run_id) == "cancelled"
    runner.start(log_to_file=False)
    time.sleep(0.3)
    with session(engine) as s:
        assert get_run(s, run_id).status == "cancelled"
    assert FakeProvider.history == []


def test_start_marks_runs_of_dead_processes_interrupted(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = create_run(engine, settings, make_prompts(2), tmp_path)
    with session(engine) as s:
        run = get_run(s, run_id)
        run.status, run.owner, run.heartbeat_at = "running", "another-host:4242", utcnow() - timedelta(minutes=5)
        s.commit()
    runner = BackgroundRunner(engine, settings, poll_seconds=0.1)
    try:
        assert runner.start(log_to_file=False) == [run_id]
        with session(engine) as s:
            assert get_run(s, run_id).status == "interrupted"
    finally:
        runner.stop()


def test_a_queued_run_is_claimed_by_exactly_one_process(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_id = create_run(engine, settings, make_prompts(1), tmp_path)
    with session(engine) as s:
        assert claim_next_queued(s) == run_id
    with session(engine) as s:
        assert claim_next_queued(s) is None
        assert get_run(s, run_id).status == "running"


def test_runs_the_cli_executes_are_never_taken_by_the_dashboard(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig, import_prompt_set
    from pipeline.runs.records import create_run as create
    from tests.conftest import write_prompt_set

    spec = load_file(write_prompt_set(tmp_path / "s.json", make_prompts(1)))
    with session(engine) as s:
        run = create(s, settings, import_prompt_set(s, spec), RunConfig(), claim=True)
        s.commit()
        assert run.status == "running"
    with session(engine) as s:
        assert claim_next_queued(s) is None
