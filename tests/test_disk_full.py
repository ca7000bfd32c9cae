"""A full disk pauses the run, resumably, with one message naming the path and the space needed.

No prompt is marked failed for it, and resume finishes the run once there is room. The real
cases run on a small tmpfs (we mount one where the machine allows it: root with ``mount``);
the simulated ones raise ``ENOSPC`` at the write boundary, or make SQLite itself answer
SQLITE_FULL (``max_page_count``), and run everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlalchemy import event
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline import files
from pipeline.errors import DiskFull
from pipeline.files import atomic_write_bytes
from pipeline.runs.records import RunConfig
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import session
from pipeline.store.models import Iteration, Run, RunItem
from tests.conftest import ROOT, create_run, make_prompts, run_cli, write_prompt_set


# ---- a small disk --------------------------------------------------------------------------------------
def _may_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[Path, str], Path]]:
    """Mount a tmpfs of a given size on a folder (skips where mounting is not permitted)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        if not _may_mount():
            pytest.skip("mounting a tmpfs needs root and mount(8): the simulated tests below cover this machine")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def grow(folder: Path, size: str) -> None:
    """Make room: the disk is given more space (as a user would free some)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


def item_statuses(engine, run_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        return [i.status for i in s.exec(select(RunItem).where(RunItem.run_id == run_id))]


def images_intact(engine, output: Path) -> int:  # type: ignore[no-untyped-def]
    """Every recorded image is on disk with its recorded hash; returns how many."""
    with session(engine) as s:
        its = s.exec(select(Iteration).where(Iteration.status == "ok")).all()
    for it in its:
        assert hashlib.sha256((output / it.image_path).read_bytes()).hexdigest() == it.sha256, it.image_path
    return len(its)


def no_noise(stderr: str) -> None:
    """One message: no traceback, no logging failure, the pause said once."""
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr[-3000:]
    assert stderr.count("pausing: disk full") <= 1, stderr[-3000:]


# ---- on a real small disk ------------------------------------------------------------------------------
def test_images_on_a_full_disk_pause_the_run_and_resume_finishes_it(tmp_path: Path, small_disk, engine, capfd) -> None:  # type: ignore[no-untyped-def]
    out = small_disk(tmp_path / "out", "400k")
    prompts = write_prompt_set(tmp_path / "set.json", make_prompts(8))
    capfd.readouterr()
    paused = run_cli("run", prompts, "--output", out, "--iterations", "2", "--concurrency", "3")
    assert paused.code == 130, paused.out + paused.err
    said = paused.out.splitlines()
    reason = next(line for line in said if line.startswith("Paused: "))
    assert reason.startswith(f"Paused: disk full: cannot write to {out}/results/")
    assert "needed" in reason and "free there" in reason and "then resume the run" in reason
    assert "Continue with: python -m pipeline resume 1" in paused.out and "--budget" not in paused.out
    no_noise(capfd.readouterr().err)
    statuses = item_statuses(engine, 1)
    assert "failed" not in statuses and "blocked" not in statuses and "pending" in statuses
    with session(engine) as s:
        run = s.get(Run, 1)
        assert run.status == "paused" and run.error == reason.removeprefix("Paused: ")
    shown = run_cli("status", "1")
    assert "paused" in shown.out and "disk full: cannot write" in shown.out

    grow(out, "64m")
    resumed = run_cli("resume", "1")
    assert resumed.code == 0, resumed.out + resumed.err
    assert "8 completed, 0 failed, 0 blocked of 8" in resumed.out
    assert images_intact(engine, out) == 16
    assert files.leftover_temp_files(out) == []


def test_a_full_database_disk_pauses_the_run_and_resume_finishes_it(tmp_path: Path, small_disk, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    """The database (with its thumbnails) on its own small disk: SQLite itself answers SQLITE_FULL."""
    db_disk = small_disk(tmp_path / "dbdisk", "2m")  # the schema, the prompts and the reserve fit; the run's thumbnails do not
    monkeypatch.setenv("DARKROOM_DATABASE_URL", f"sqlite:///{db_disk / 'darkroom.db'}")
    prompts = write_prompt_set(tmp_path / "set.json", make_prompts(20))
    capfd.readouterr()
    paused = run_cli("run", prompts, "--iterations", "2", "--concurrency", "3")
    assert paused.code == 130, paused.out + paused.err
    assert f"Paused: disk full: cannot write the database {db_disk / 'darkroom.db'}" in paused.out
    assert "needed" in paused.out and "free there" in paused.out
    no_noise(capfd.readouterr().err)

    grow(db_disk, "64m")
    resumed = run_cli("resume", "1")
    assert resumed.code == 0, resumed.out + resumed.err
    assert "20 completed, 0 failed, 0 blocked of 20" in resumed.out


def test_a_data_folder_on_a_full_disk_pauses_with_one_message_logs_included(tmp_path: Path, small_disk, isolated_data_dir: Path,
                                                                           capfd) -> None:  # type: ignore[no-untyped-def]
    """Database, images, sidecars and the log file all on one disk that fills up."""
    data = small_disk(isolated_data_dir, "3m")
    prompts = write_prompt_set(tmp_path / "set.json", make_prompts(10))
    capfd.readouterr()
    paused = run_cli("run", prompts, "--iterations", "2", "--concurrency", "3")
    assert paused.code == 130, paused.out + paused.err
    assert "Paused: disk full: cannot write " in paused.out and str(data) in paused.out
    no_noise(capfd.readouterr().err)

    grow(data, "64m")
    resumed = run_cli("resume", "1")
    assert resumed.code == 0, resumed.out + resumed.err
    assert "10 completed, 0 failed, 0 blocked of 10" in resumed.out


# ---- simulated: ENOSPC at the write boundary; SQLITE_FULL from SQLite -------------------------------------------------
def test_the_message_names_the_path_the_space_needed_and_the_space_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "results" / "p1" / "iteration_1.jpg"

    def no_space(folder: Path, name: str) -> tuple[int, str]:
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / name))

    monkeypatch.setattr(files, "_open_temp", no_space)
    with pytest.raises(DiskFull) as caught:
        atomic_write_bytes(target, b"x" * 150_000)
    message = str(caught.value)
    assert message.startswith(f"disk full: cannot write to {target} (about 150.0 KB needed, ")
    assert "free there" in message and message.endswith("then resume the run")
    assert files.is_disk_full_pause(message)


REAL_OPEN_TEMP = files._open_temp


def _full_after(monkeypatch: pytest.MonkeyPatch, suffix: str, allowed: int) -> list[str]:
    """Writes of files ending with ``suffix`` fail with ENOSPC after ``allowed`` of them succeeded
    (until :func:`_space_freed`)."""
    real, refused = REAL_OPEN_TEMP, []
    written = 0

    def open_temp(folder: Path, name: str) -> tuple[int, str]:
        nonlocal written
        if name.endswith(suffix):
            written += 1
            if written > allowed:
                refused.append(name)
                raise OSError(errno.ENOSPC, "No space left on device", str(folder / name))
        return real(folder, name)

    monkeypatch.setattr(files, "_open_temp", open_temp)
    return refused


def _space_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_open_temp", REAL_OPEN_TEMP)  # (not monkeypatch.undo(): that would drop the test's data folder too)


@pytest.mark.parametrize("what, suffix, allowed", [("image", ".png", 3), ("sidecar", ".json", 9)])
def test_a_write_refused_for_space_pauses_and_nothing_fails(what: str, suffix: str, allowed: int, tmp_path: Path, settings, engine,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run_id = create_run(engine, settings, make_prompts(6), tmp_path, providers=["fake"], iterations=2, concurrency=2)
    refused = _full_after(monkeypatch, suffix, allowed)
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    assert refused, f"no {what} write was refused"
    assert outcome.status == "paused" and outcome.error.startswith("disk full: cannot write to ")
    assert refused[0] in outcome.error
    assert "failed" not in item_statuses(engine, run_id) and "blocked" not in item_statuses(engine, run_id)

    _space_freed(monkeypatch)
    resumed = run_cli("resume", str(run_id))
    assert resumed.code == 0, resumed.out + resumed.err
    assert "6 completed, 0 failed, 0 blocked of 6" in resumed.out
    assert images_intact(engine, settings.runs_dir / str(run_id)) == 12
    for folder in (settings.runs_dir / str(run_id) / "results").iterdir():  # every sidecar is there again
        assert {p.name for p in folder.glob("*.json")} >= {"summary.json", "iteration_1_results.json", "iteration_1_evaluation.json"}


@pytest.mark.sqlite_only
def test_sqlite_answering_full_pauses_the_run(tmp_path: Path, settings, engine) -> None:  # type: ignore[no-untyped-def]
    """SQLite's own SQLITE_FULL (its page limit reached, as on a full disk) is a pause, not a failure."""
    run_id = create_run(engine, settings, make_prompts(6), tmp_path, providers=["fake"], iterations=2, concurrency=2)
    with engine.connect() as conn:
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
    engine.dispose()

    @event.listens_for(engine, "connect")
    def limit(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 12}")

    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    assert outcome.status == "paused", outcome
    assert outcome.error.startswith(f"disk full: cannot write the database {settings.data_dir / 'darkroom.db'}")
    event.remove(engine, "connect", limit)
    engine.dispose()
    assert "failed" not in item_statuses(engine, run_id)
    with session(engine) as s:
        assert s.get(Run, run_id).status in ("paused", "running")  # "running" when not even the end could be written
    resumed = run_cli("resume", str(run_id))
    assert resumed.code == 0, resumed.out + resumed.err
    assert "6 completed" in resumed.out


# ---- the dashboard --------------------------------------------------------------------------------------------
def test_the_runs_page_shows_the_disk_message_and_resumes_without_asking_for_a_budget(tmp_path: Path, settings, engine,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    run_id = create_run(engine, settings, make_prompts(4), tmp_path, providers=["fake"], iterations=1, concurrency=1)
    _full_after(monkeypatch, ".png", 1)
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    assert outcome.status == "paused"
    _space_freed(monkeypatch)
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.run()
        at.switch_page("pages/runs.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert any(w.value == "Paused:" for w in at.warning)
        assert any(t.value.startswith("disk full: cannot write to ") for t in at.text)
        assert not [n for n in at.number_input if n.label == "Budget (USD)"]  # space is what it needs, not money
        next(b for b in at.button if b.label == "Resume").click().run()
        with session(engine) as s:
            run = s.get(Run, run_id)
            assert RunConfig.from_dict(run.config).budget_usd is None
            assert run.status in ("queued", "running", "completed")
    finally:
        st.cache_resource.clear()
