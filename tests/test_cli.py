"""The command line: exit codes, messages on stderr, nothing written on bad input, logging, Ctrl-C, --json."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pipeline import __version__
from pipeline.errors import ProviderError
from tests.conftest import PYTHON, ROOT, database_rows, make_prompts, run_cli, subprocess_env, write_prompt_set
from tests.fakes import FakeProvider


def test_invalid_prompt_set_exits_2_names_every_problem_and_writes_nothing(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "bad.json", [{"id": "ok", "prompt": "x"}, {"id": "../x", "prompt": ""}, {"id": "ok", "prompt": "y"}])
    result = run_cli("run", path, "--output", tmp_path / "out")
    assert result.code == 2
    assert result.out == ""
    assert f"{path}: 3 problems in the prompt set:" in result.err
    for expected in ['prompts[1].id: "../x" has characters', "prompts[1].prompt: is empty",
                     'prompts[2].id: duplicate id "ok" (first at prompts[0])']:
        assert expected in result.err
    assert not settings.data_dir.exists(), "no database, log or run folder may be written"
    assert not (tmp_path / "out").exists()


def test_invalid_json_exits_2(tmp_path: Path, settings) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"prompts": [}')
    result = run_cli("run", path)
    assert result.code == 2 and "invalid JSON at line 1 column 14" in result.err
    assert not settings.data_dir.exists()


def test_usage_errors_exit_2(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    assert run_cli("run", path, "--iterations", "6").err.strip() == "error: --iterations: 6 is outside 1–5"
    assert run_cli("run", path, "--concurrency", "0").code == 2
    assert "invalid int value" in run_cli("run", path, "--iterations", "two").err
    assert run_cli("frobnicate").code == 2
    assert run_cli("export", "1").code == 2  # --out is required
    assert not settings.data_dir.exists()


def test_a_run_name_that_is_not_text_exits_2_naming_the_option(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    undecodable = run_cli("run", path, "--name", "bad\udcff")  # what Python makes of the byte 0xFF in argv
    assert undecodable.code == 2 and "--name: the run name is not valid UTF-8 text" in undecodable.err
    assert "Traceback" not in undecodable.err
    assert "control character" in run_cli("run", path, "--name", "a\tb").err
    assert "over the limit of 200" in run_cli("run", path, "--name", "n" * 201).err
    assert not (settings.data_dir / "runs").exists()


def test_a_bad_resilience_setting_exits_2_before_any_run_is_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[resilience.retry]\nmax_attempts = 0\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    result = run_cli("run", write_prompt_set(tmp_path / "s.json", make_prompts(1)))
    assert result.code == 2 and "retry.max_attempts must be at least 1, not 0" in result.err
    assert "Run 1" not in result.out + result.err and not (settings.data_dir / "runs").exists()


def test_a_run_id_past_any_database_integer_is_no_run_not_a_traceback(tmp_path: Path) -> None:
    for command in (("status",), ("resume",), ("export", "--out", str(tmp_path / "x.zip"))):
        result = run_cli(command[0], "99999999999999999999999", *command[1:])
        assert result.code == 2, (command, result.err)
        assert "no run 99999999999999999999999" in result.err and "Traceback" not in result.err


def test_status_lists_runs_and_one_runs_prompts(tmp_path: Path) -> None:
    assert "No runs yet" in run_cli("status").out
    path = write_prompt_set(tmp_path / "s.json", make_prompts(2))
    assert run_cli("run", path, "--iterations", "1").code == 0
    listing = run_cli("status").out
    assert re.search(r"^1\s+completed\s+2\s+0\s+0\s+2\s+\$0\.0000\s+offline\s+s\s", listing, re.M)
    detail = run_cli("status", "1").out
    assert re.search(r"^p001\s+completed\s+1\s+1\s+\d+\.\d\d", detail, re.M)


def test_each_run_logs_to_a_timestamped_file_in_the_pipeline_format(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    assert run_cli("run", path, "--iterations", "1").code == 0
    [log_file] = list((settings.data_dir / "logs").glob("pipeline_*.log"))
    assert re.fullmatch(rf"pipeline_\d{{8}}_\d{{6}}_{os.getpid()}\.log", log_file.name)
    text = log_file.read_text()
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - pipeline\.[a-z.]+ - INFO - ", text.splitlines()[0])
    assert "run 1: prompt p000 completed" in text  # prompts by their id in the set, never by a database row
    assert "item" not in text


def test_log_files_rotate_and_old_ones_are_cleaned_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings) -> None:
    override = tmp_path / "override.toml"
    override.write_text("[logs]\nmax_bytes = 1000\nbackup_count = 2\nkeep_files = 2\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(override))
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has any more
    for stamp in (f"20200101_000000_{gone.pid}", f"20200102_000000_{gone.pid}", "20200103_000000"):  # finished processes' logs
        (logs / f"pipeline_{stamp}.log").write_text("old\n")
    (logs / f"pipeline_20200101_000000_{gone.pid}.log.1").write_text("old\n")
    (logs / f"pipeline_20190101_000000_{os.getppid()}.log").write_text("a live process's log is never deleted\n")
    (logs / "notes.txt").write_text("not a log\n")
    path = write_prompt_set(tmp_path / "s.json", make_prompts(8))  # logs enough to rotate twice on either database
    assert run_cli("run", path, "--iterations", "2").code == 0
    mine = sorted(logs.glob(f"pipeline_*_{os.getpid()}.log*"))
    assert len(mine) == 3, "rotated at 1,000 bytes, with 2 older parts kept"
    assert all(p.stat().st_size <= 1000 + 500 for p in mine)
    survivors = sorted(p.name for p in logs.iterdir() if p not in mine)
    # This process's and the newest other one are kept, and the log of a process still running.
    assert survivors == ["notes.txt", f"pipeline_20190101_000000_{os.getppid()}.log", "pipeline_20200103_000000.log"]


def test_version(tmp_path: Path, settings) -> None:
    result = run_cli("--version")
    assert (result.code, result.out, result.err) == (0, f"darkroom {__version__}\n", "")
    shell = subprocess.run([PYTHON, "-m", "pipeline", "--version"], cwd=ROOT, env=subprocess_env(tmp_path / "data"),
                           capture_output=True, text=True, timeout=60)
    assert (shell.returncode, shell.stdout.strip()) == (0, f"darkroom {__version__}")
    assert not settings.data_dir.exists()


def test_status_json_is_machine_readable(tmp_path: Path) -> None:
    assert json.loads(run_cli("status", "--json").out) == []
    FakeProvider.failures.append(ProviderError("refused", kind="bad_request", http_status=400))
    path = write_prompt_set(tmp_path / "s.json", make_prompts(2))
    assert run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "1").code == 1
    [run] = json.loads(run_cli("status", "--json").out)
    assert {k: run[k] for k in ("id", "status", "outcome", "total", "completed", "failed", "blocked", "done")} == {
        "id": 1, "status": "completed", "outcome": "partial", "total": 2, "completed": 1, "failed": 1, "blocked": 0, "done": 2}
    assert run["config"]["providers"] == ["fake"] and run["created_at"].startswith("20")
    detail = json.loads(run_cli("status", "1", "--json").out)
    assert detail["run"]["id"] == 1 and detail["output_dir"].endswith("runs/1")
    assert [(p["prompt_id"], p["status"]) for p in detail["prompts"]] == [("p000", "failed"), ("p001", "completed")]
    assert "refused" in detail["prompts"][0]["error"]
    assert run_cli("status", "7", "--json").code == 2


def test_an_unusable_output_folder_exits_2_and_writes_nothing(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    a_file = tmp_path / "taken.txt"
    a_file.write_text("x")
    cases = {a_file: "is a file, not a folder", a_file / "sub": "taken.txt is a file"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results").write_text("a file where results/ goes")
    cases[tmp_path / "out"] = "results is a file, not a folder"
    for output, message in cases.items():
        result = run_cli("run", path, "--output", output)
        assert result.code == 2, result.err
        assert result.err.startswith("error: --output: ") and message in result.err, result.err
        assert "Traceback" not in result.err
    assert not settings.data_dir.exists(), "no database, log or run row may be written"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no folder is unwritable to it")
def test_an_unwritable_output_folder_exits_2(tmp_path: Path, settings) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = run_cli("run", write_prompt_set(tmp_path / "s.json", make_prompts(1)), "--output", locked / "out")
    assert result.code == 2 and "cannot be written" in result.err
    assert not settings.data_dir.exists()


def test_an_unusable_data_folder_or_export_target_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    assert run_cli("run", path, "--iterations", "1").code == 0
    folder = tmp_path / "a_folder"
    folder.mkdir()
    for out, message in ((folder, "is a folder; name the file to write"), (path / "x.zip", "s.json is a file")):
        result = run_cli("export", "1", "--out", out)
        assert result.code == 2 and result.err.startswith("error: --out: ") and message in result.err, result.err
    assert list(folder.iterdir()) == []
    data_file = tmp_path / "data_is_a_file"
    data_file.write_text("x")
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(data_file))
    for args in (("run", path), ("resume", "1")):
        result = run_cli(*args)
        assert result.code == 2 and "data folder (DARKROOM_DATA_DIR): " in result.err and "is a file" in result.err, result.err
    assert data_file.read_text() == "x"


def test_a_run_whose_every_prompt_failed_says_so_and_exits_1(tmp_path: Path) -> None:
    for _ in range(3):
        FakeProvider.failures.append(ProviderError("refused", kind="bad_request", http_status=400))
    path = write_prompt_set(tmp_path / "s.json", make_prompts(3))
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1")
    assert result.code == 1
    assert "Run 1 failed (no prompt completed): 0 completed, 3 failed, 0 blocked of 3 prompts" in result.out
    assert "python -m pipeline status 1" in result.out
    assert re.search(r"^1\s+failed\s+0\s+3\s+0\s+3\s", run_cli("status").out, re.M)
    assert "Run 1 (s): failed (no prompt completed); 0 completed, 3 failed" in run_cli("status", "1").out

    blocked = write_prompt_set(tmp_path / "b.json", make_prompts(2, prompt="a forbidden thing"))
    result = run_cli("run", blocked, "--providers", "fake", "--iterations", "1", "--block-rewrites", "0")
    assert result.code == 1 and "Run 2 blocked (every prompt was refused): 0 completed, 0 failed, 2 blocked" in result.out

    FakeProvider.failures.append(ProviderError("refused", kind="bad_request", http_status=400))
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "1")
    assert result.code == 1 and "Run 3 completed with failed or blocked prompts: 2 completed, 1 failed" in result.out


def test_bad_settings_name_the_option_on_the_command_line(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "s.json", make_prompts(1))
    assert run_cli("run", path, "--target-score", "11").err.strip() == "error: --target-score: 11.0 is outside 0–10"
    assert run_cli("run", path, "--block-rewrites", "9").err.strip() == "error: --block-rewrites: 9 is outside 0–3"
    assert run_cli("run", path, "--providers", " , ").err.strip() == "error: --providers: name at least one"
    assert run_cli("run", path, "--judge", "offline,offline").err.strip() == "error: --judge: offline named more than once"


# ---- Ctrl-C: calls in flight end within seconds, recorded as cancelled -----------------------------------------------
def _start_stuck_run(tmp_path: Path, grace_s: float) -> tuple[subprocess.Popen, Path]:
    """A CLI run whose provider never answers; returns once its first calls are in flight."""
    data, journal = tmp_path / "data", tmp_path / "journal.tsv"
    override = tmp_path / "override.toml"
    override.write_text(f"[runner]\nstop_grace_s = {grace_s}\ncancel_wait_s = 1.0\n")
    env = subprocess_env(data, DARKROOM_FAKE_JOURNAL=str(journal), DARKROOM_FAKE_DELAY="600", DARKROOM_CONFIG=str(override))
    path = write_prompt_set(tmp_path / "s.json", make_prompts(4))
    proc = subprocess.Popen([PYTHON, "-m", "pipeline", "run", str(path), "--providers", "fake", "--concurrency", "2"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline and proc.poll() is None, "the run did not start its calls"
        time.sleep(0.05)
    return proc, data / "darkroom.db"


def _rows(db: Path, sql: str) -> list[tuple]:
    return database_rows(db.parent, sql)  # the SQLite file's folder, or the test's PostgreSQL database


def test_ctrl_c_cancels_stuck_calls_after_the_grace_period_and_records_them(tmp_path: Path) -> None:
    proc, db = _start_stuck_run(tmp_path, grace_s=1.0)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 6, "a stuck call held the CLI after Ctrl-C"
    assert "Continue with: python -m pipeline resume 1" in out and "Traceback" not in err
    assert _rows(db, "SELECT status FROM run") == [("interrupted",)]
    assert _rows(db, "SELECT provider, outcome, error_kind FROM provider_call") == [("fake", "cancelled", "cancelled")] * 2
    assert _rows(db, "SELECT DISTINCT status FROM run_item") == [("pending",)]


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    proc, db = _start_stuck_run(tmp_path, grace_s=300.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 3
    assert _rows(db, "SELECT status FROM run") == [("interrupted",)]
    assert _rows(db, "SELECT COUNT(*) FROM provider_call WHERE outcome = 'cancelled'") == [(2,)]


@pytest.mark.sqlite_only  # reads the SQLite file directly
def test_resume_refuses_a_run_whose_output_folder_became_a_file(tmp_path: Path, settings, engine) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import create_run

    run_id = create_run(engine, settings, make_prompts(1), tmp_path, iterations=1)
    settings.runs_dir.mkdir(parents=True)
    (settings.runs_dir / str(run_id)).write_text("not a folder")
    result = run_cli("resume", str(run_id))
    assert result.code == 2 and f"run {run_id} cannot write its results: " in result.err and "is a file" in result.err
    assert _rows(settings.data_dir / "darkroom.db", "SELECT status, owner FROM run") == [("queued", "")]
