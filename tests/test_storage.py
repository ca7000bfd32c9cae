"""Broken storage: a damaged database, a lost or emptied one, a read-only data folder.

Each gives one message naming what is wrong and what to do, in the CLI (an exit code, no
traceback) and in the dashboard (no exception box), and none of them costs an image on disk.
A full disk is in tests/test_disk_full.py.
"""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from pipeline.errors import StorageUnwritable
from pipeline.files import check_writable_folder, unused_folder
from pipeline.store.check import integrity_problems
from pipeline.store.check import main as check_main
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set

# The database file and the folder holding it: SQLite's storage (a server's is its operator's).
pytestmark = pytest.mark.sqlite_only


# ---- helpers ---------------------------------------------------------------------------------------
@dataclass
class Printed:
    returncode: int
    stdout: str
    stderr: str  # everything written to the process's stderr, logging included


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Printed]:
    """The CLI's ``main`` with a data folder; what it prints is captured at the file descriptors."""

    def call(data: Path, *args: object) -> Printed:
        monkeypatch.setenv("DARKROOM_DATA_DIR", str(data))
        capfd.readouterr()
        result = run_cli(*map(str, args))
        printed = capfd.readouterr()
        return Printed(result.code, result.out + printed.out, result.err + printed.err)

    return call


def settle(db: Path) -> None:
    """Fold the write-ahead log into the file, as the last connection of a clean shutdown does."""
    gc.collect()
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_message(stderr: str) -> None:
    """What the user sees is a message, not a traceback or a logging failure."""
    assert "Traceback" not in stderr and "Logging error" not in stderr, stderr
    assert stderr.count("error:") == 1, stderr


@pytest.fixture
def finished_run(tmp_path: Path, isolated_data_dir: Path) -> Path:
    """A finished offline run of 6 prompts x 2 iterations; returns the database file (settled, no -wal)."""
    result = run_cli("run", write_prompt_set(tmp_path / "set.json", make_prompts(6)), "--iterations", "2")
    assert result.code == 0, result.err
    db = isolated_data_dir / "darkroom.db"
    settle(db)
    return db


def _truncate(db: Path) -> None:
    with db.open("r+b") as f:
        f.truncate(db.stat().st_size // 2)


def _garbage_header(db: Path) -> None:
    with db.open("r+b") as f:
        f.write(b"\x00garbage!" * 12)


def _garbage_middle(db: Path) -> None:
    """Overwrite the pages from the ``run`` table's root to three quarters of the file (the header and schema stay whole)."""
    con = sqlite3.connect(db)
    try:
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = 'run'").fetchone()[0]
    finally:
        con.close()
    start, end = (root - 1) * page_size, db.stat().st_size * 3 // 4
    with db.open("r+b") as f:
        f.seek(start)
        f.write(bytes((i * 37 + 11) % 251 for i in range(end - start)))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {"truncated": _truncate, "garbage header": _garbage_header,
                                                  "garbage middle": _garbage_middle}
WHAT = {"truncated": "truncated", "garbage header": "not a SQLite header", "garbage middle": "malformed"}


# ---- a damaged database ------------------------------------------------------------------------------
@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_damaged_database_gives_one_message_on_every_command(corruption: str, finished_run: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    data = finished_run.parent
    images = tree_hashes(data / "runs")
    CORRUPTIONS[corruption](finished_run)
    damaged = finished_run.read_bytes()
    prompt_set = write_prompt_set(tmp_path / "again.json", make_prompts(2))
    for args in (["status"], ["status", "1"], ["resume", "1"], ["run", prompt_set], ["export", "1", "--out", tmp_path / "x.zip"]):
        result = cli(data, *args)
        assert result.returncode == 1, (args, result.stderr)
        one_message(result.stderr)
        assert f"the database {finished_run} is damaged" in result.stderr and WHAT[corruption] in result.stderr
        assert "python -m pipeline.store.check" in result.stderr  # how to check it
        assert "backup copy" in result.stderr  # how to get it back
        assert f"{data / 'runs'}/<run id>/results/" in result.stderr  # where the images are
    assert finished_run.read_bytes() == damaged, "a damaged database was written to"
    assert tree_hashes(data / "runs") == images
    assert not (tmp_path / "x.zip").exists()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_the_integrity_check_names_the_damage(corruption: str, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check_main([]) == 0 and "whole" in capsys.readouterr().out
    CORRUPTIONS[corruption](finished_run)
    assert integrity_problems(finished_run)
    assert check_main([]) == 1
    out = capsys.readouterr().out
    assert "damaged" in out and "backup copy" in out and ".recover" in out


@pytest.fixture
def app() -> Iterator[Callable[[], AppTest]]:
    st.cache_resource.clear()

    def make() -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.run()
        return at

    yield make
    st.cache_resource.clear()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_the_dashboard_shows_a_damaged_database_as_a_message(corruption: str, finished_run: Path, app) -> None:  # type: ignore[no-untyped-def]
    CORRUPTIONS[corruption](finished_run)
    at = app()
    assert not at.exception, [e.value for e in at.exception]
    assert "cannot use its data folder or database" in at.error[0].value
    shown = at.code[0].value
    assert f"the database {finished_run} is damaged" in shown and "backup copy" in shown and "pipeline.store.check" in shown


# ---- a lost or emptied database ------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_database_never_lets_a_new_run_write_over_old_images(how: str, finished_run: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    data = finished_run.parent
    old = tree_hashes(data / "runs" / "1")
    assert old
    if how == "deleted":
        finished_run.unlink()
    else:
        finished_run.write_bytes(b"")
    result = cli(data, "run", write_prompt_set(tmp_path / "new.json", make_prompts(3)), "--iterations", "1")
    assert result.returncode == 0, result.stderr
    assert "Run 1 completed" in result.stdout  # the new database starts its ids again…
    assert f"Results: {data / 'runs' / '1-2' / 'results'}" in result.stdout  # …in a folder of its own
    said = "did not exist" if how == "deleted" else "was empty (0 bytes)"
    assert f"the database {finished_run} {said}" in result.stderr
    assert f"{data / 'runs' / '1'} holds the files of a run this database does not know" in result.stderr
    assert tree_hashes(data / "runs" / "1") == old, "the old run's files were changed"
    assert len(list((data / "runs" / "1-2" / "results").glob("*/iteration_1.*"))) == 3


def test_unused_folder_skips_folders_holding_files_or_taken(tmp_path: Path) -> None:
    base = tmp_path / "runs" / "4"
    assert unused_folder(base) == base  # absent
    base.mkdir(parents=True)
    assert unused_folder(base) == base  # empty
    (base / "results" / "p1").mkdir(parents=True)
    assert unused_folder(base) == base  # only empty folders
    (base / "results" / "p1" / "iteration_1.png").write_bytes(b"x")
    assert unused_folder(base) == tmp_path / "runs" / "4-2"
    assert unused_folder(base, taken=lambda p: p.name == "4-2") == tmp_path / "runs" / "4-3"


# ---- a read-only data folder -------------------------------------------------------------------------------
def _can_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` made read-only: a read-only bind mount when we are root (root ignores permission bits), else chmod."""
    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if not _can_mount():
        pytest.skip("cannot make a read-only folder here (root without mount)")
    bound = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"mount --bind is not permitted here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_read_only_data_folder_is_named_with_exit_2_and_nothing_written(finished_run: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    data = finished_run.parent
    before = tree_hashes(data)
    with read_only(data):
        with pytest.raises(StorageUnwritable, match="read-only|permission denied"):
            check_writable_folder(data)
        for args in (["status"], ["run", write_prompt_set(tmp_path / "set2.json", make_prompts(2))], ["resume", "1"]):
            result = cli(data, *args)
            assert result.returncode == 2, (args, result.stderr)
            one_message(result.stderr)
            assert str(data) in result.stderr and "DARKROOM_DATA_DIR" in result.stderr
            assert "read-only" in result.stderr.lower() or "permission denied" in result.stderr.lower()
    assert tree_hashes(data) == before


def test_a_data_folder_that_cannot_be_created_is_named_with_exit_2(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    parent = tmp_path / "locked"
    with read_only(parent):
        result = cli(parent / "data", "status")
    assert result.returncode == 2, result.stderr
    one_message(result.stderr)
    assert f"cannot write {parent / 'data'}" in result.stderr


def test_the_dashboard_names_a_read_only_data_folder(finished_run: Path, app) -> None:  # type: ignore[no-untyped-def]
    data = finished_run.parent
    with read_only(data):
        at = app()
    assert not at.exception, [e.value for e in at.exception]
    assert "cannot use its data folder or database" in at.error[0].value
    assert f"cannot write {data}" in at.code[0].value

