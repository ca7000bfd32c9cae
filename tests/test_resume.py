"""Interrupt and resume: no finished step is ever done twice, half-done ones are redone.

The fake provider's journal counts the calls the "service" received, independently of the
pipeline's own records, across processes.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import time
from pathlib import Path

from sqlmodel import select

from pipeline.files import leftover_temp_files
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import session
from pipeline.store.models import Iteration, ProviderCall, Run, RunItem
from tests.conftest import PYTHON, ROOT, create_run, database_rows, make_prompts, run_cli, subprocess_env, write_prompt_set
from tests.fakes import FakeProvider


def ok_generate_calls_per_step(engine) -> collections.Counter:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        keys = s.exec(select(ProviderCall.step_key).where(ProviderCall.operation == "generate", ProviderCall.outcome == "ok")).all()
    return collections.Counter(keys)


def test_stop_then_resume_finishes_every_prompt_without_repeating_a_step(tmp_path: Path, settings, engine) -> None:
    run_id = create_run(engine, settings, make_prompts(8), tmp_path, providers=["fake"], iterations=2, concurrency=2)
    executor = RunExecutor(engine, settings, run_id)
    FakeProvider.on_call = lambda request: executor.request_stop() if len(FakeProvider.history) == 5 else None
    outcome = asyncio.run(executor.execute())
    assert outcome.status == "interrupted" and 0 < outcome.completed < 8
    with session(engine) as s:
        assert s.get(Run, run_id).status == "interrupted"
        assert not s.exec(select(RunItem).where(RunItem.status == "running")).all()
        # In-flight steps were allowed to finish: nothing is left half-done.
        assert not s.exec(select(Iteration).where(Iteration.status == "running")).all()
    calls_before = len(FakeProvider.history)

    FakeProvider.on_call = None
    result = run_cli("resume", str(run_id))
    assert result.code == 0, result.err
    assert "8 completed, 0 failed, 0 blocked of 8" in result.out
    requests = collections.Counter((r.prompt_id, r.prompt) for r in FakeProvider.history)
    assert max(requests.values()) == 1, "a finished generation was requested again"
    assert len(FakeProvider.history) > calls_before
    assert set(ok_generate_calls_per_step(engine).values()) == {1}


def test_resume_refuses_a_completed_run_and_an_unknown_one(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
    assert run_cli("run", path, "--iterations", "1").code == 0
    done = run_cli("resume", "1")
    assert done.code == 2 and "already completed; add --retry-failed" in done.err
    missing = run_cli("resume", "99")
    assert missing.code == 2 and "no run 99" in missing.err


def test_retry_failed_reruns_only_the_failed_prompts(tmp_path: Path, settings, engine) -> None:
    from pipeline.errors import ProviderError

    FakeProvider.failures.append(ProviderError("boom", kind="server", http_status=500))
    path = write_prompt_set(tmp_path / "set.json", make_prompts(3))
    assert run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "1").code == 1
    before = len(FakeProvider.history)
    assert run_cli("resume", "1", "--retry-failed").code == 0
    assert [r.prompt_id for r in FakeProvider.history[before:]] == ["p000"]


def _journal(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split("\t", 1)) for line in path.read_text().splitlines()]  # type: ignore[misc]


def _finished_generations(db: Path) -> set[tuple[str, str]]:
    rows = database_rows(db.parent,  # [] while the subprocess is still creating its tables
        "SELECT prompt.key, iteration.prompt_text FROM iteration JOIN run_item ON run_item.id = iteration.run_item_id "
        "JOIN prompt ON prompt.id = run_item.prompt_id WHERE iteration.status = 'ok'")
    return {(k, t) for k, t in rows}


def _query(db: Path, sql: str) -> list[tuple]:
    return database_rows(db.parent, sql)  # the SQLite file's folder, or the test's PostgreSQL database


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the pipeline subprocess"
        time.sleep(0.05)


def _start(tmp_path: Path, data: Path, journal: Path, prompts: int) -> subprocess.Popen:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(prompts))
    env = subprocess_env(data, DARKROOM_FAKE_JOURNAL=str(journal), DARKROOM_FAKE_DELAY="0.05")
    return subprocess.Popen([PYTHON, "-m", "pipeline", "run", str(path), "--providers", "fake", "--concurrency", "3"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_then_signal(tmp_path: Path, prompts: int, finished: int, sig: signal.Signals) -> tuple[Path, Path, Path, subprocess.Popen]:
    """Start a run in a subprocess, send ``sig`` once ``finished`` generations are committed."""
    data, journal = tmp_path / "data", tmp_path / "journal.tsv"
    db = data / "darkroom.db"
    proc = _start(tmp_path, data, journal, prompts=prompts)
    _wait_for(lambda: len(_finished_generations(db)) >= finished)
    proc.send_signal(sig)
    return data, journal, db, proc


def _resume(data: Path, journal: Path) -> subprocess.CompletedProcess:
    env = subprocess_env(data, DARKROOM_FAKE_JOURNAL=str(journal))
    return subprocess.run([PYTHON, "-m", "pipeline", "resume", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_kill_9_mid_run_then_resume_completes_without_repeating_finished_steps(tmp_path: Path) -> None:
    data, journal, db, proc = _run_then_signal(tmp_path, prompts=30, finished=12, sig=signal.SIGKILL)
    proc.communicate(timeout=30)
    finished_at_kill = _finished_generations(db)
    calls_at_kill = len(_journal(journal))
    assert 12 <= len(finished_at_kill) < 60, "the kill should land mid-run"

    status = subprocess.run([PYTHON, "-m", "pipeline", "status"], cwd=ROOT, env=subprocess_env(data), capture_output=True, text=True)
    assert "interrupted" in status.stdout  # a run left "running" by a dead process is recovered

    resumed = _resume(data, journal)
    assert resumed.returncode == 0, resumed.stderr
    assert "30 completed, 0 failed, 0 blocked of 30" in resumed.stdout
    after = _journal(journal)[calls_at_kill:]
    repeated = [call for call in after if call in finished_at_kill]
    assert repeated == [], "a generation that had finished before the kill was paid for again"
    # Each generation was asked at most twice: once before the kill (half-done) and once after.
    assert max(collections.Counter(_journal(journal)).values()) <= 2
    if not os.environ.get("DARKROOM_DATABASE_URL"):  # on SQLite the file survived the kill intact
        assert _query(db, "PRAGMA integrity_check") == [("ok",)]
    assert _query(db, "SELECT status FROM run WHERE id = 1") == [("completed",)]
    assert _query(db, "SELECT step_key FROM provider_call WHERE outcome = 'ok' GROUP BY step_key HAVING COUNT(*) > 1") == []
    results = data / "runs" / "1" / "results"
    assert leftover_temp_files(results) == []
    assert len(list(results.glob("*/summary.json"))) == 30


def test_ctrl_c_lets_in_flight_steps_finish_exits_130_and_resume_continues(tmp_path: Path) -> None:
    data, journal, db, proc = _run_then_signal(tmp_path, prompts=20, finished=6, sig=signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Continue with: python -m pipeline resume 1" in out
    assert _query(db, "SELECT status FROM run WHERE id = 1") == [("interrupted",)]
    assert _query(db, "SELECT COUNT(*) FROM iteration WHERE status = 'running'") == [(0,)]
    resumed = _resume(data, journal)
    assert resumed.returncode == 0, resumed.stderr
    assert max(collections.Counter(_journal(journal)).values()) == 1, "a step was done twice"
    assert "20 completed" in resumed.stdout


def test_a_cancel_asked_from_elsewhere_stops_the_run_as_cancelled(tmp_path: Path, settings, engine) -> None:
    """The dashboard cancels through the database; the runner notices on its heartbeat."""
    from pipeline.runs.records import request_cancel

    run_id = create_run(engine, settings, make_prompts(6), tmp_path, providers=["fake"], iterations=1, concurrency=1)
    release = asyncio.Event()
    FakeProvider.gates["p001"] = release

    def cancel_then_release(request) -> None:  # type: ignore[no-untyped-def]
        if request.prompt_id == "p001":
            with session(engine) as s:
                request_cancel(s, run_id)
                s.commit()
            asyncio.get_running_loop().call_later(2.5, release.set)  # after the next heartbeat

    FakeProvider.on_call = cancel_then_release
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    assert (outcome.status, outcome.completed) == ("cancelled", 1)
    assert [r.prompt_id for r in FakeProvider.history] == ["p000", "p001"]
    with session(engine) as s:
        # p001's in-flight generation finished and was kept; the prompt waits for a resume.
        assert [it.status for it in s.exec(select(Iteration).order_by(Iteration.id))] == ["ok", "ok"]
    FakeProvider.on_call = None
    assert run_cli("resume", str(run_id)).code == 0  # a cancelled run can still be resumed
    assert [r.prompt_id for r in FakeProvider.history].count("p001") == 1


def test_a_finished_image_deleted_from_disk_is_generated_again_on_resume(tmp_path: Path, settings, engine) -> None:
    run_id = create_run(engine, settings, make_prompts(2), tmp_path, providers=["fake"], iterations=1, concurrency=1)
    assert asyncio.run(RunExecutor(engine, settings, run_id).execute()).status == "completed"
    image = settings.runs_dir / str(run_id) / "results" / "p001" / "iteration_1.png"
    image.unlink()
    with session(engine) as s:
        s.get(RunItem, 2).status = "pending"  # as if the run had stopped before this prompt was finished
        s.get(Run, run_id).status = "interrupted"
        s.commit()
    before = len(FakeProvider.history)
    assert run_cli("resume", str(run_id)).code == 0
    assert [r.prompt_id for r in FakeProvider.history[before:]] == ["p001"]
    assert image.exists()


def test_a_run_this_process_owns_is_alive_only_while_this_process_executes_it() -> None:
    """A run whose end could not be recorded (its last write refused by a full disk) stays "running"
    under this process's name: the same process may still resume it, since nothing here executes it."""
    from pipeline.runs.records import EXECUTING_HERE, owner_alive, this_owner
    from pipeline.store.models import Run, utcnow

    run = Run(id=41, prompt_set_id=1, name="r", status="running", config={}, output_dir="runs/41", owner=this_owner(),
              heartbeat_at=utcnow())
    assert not owner_alive(run)
    EXECUTING_HERE.add(41)
    try:
        assert owner_alive(run)
    finally:
        EXECUTING_HERE.discard(41)
