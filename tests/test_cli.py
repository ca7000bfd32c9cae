"""The command line: exit codes, messages on stderr, nothing written on bad input, logging."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import make_prompts, run_cli, write_prompt_set


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
    assert re.fullmatch(r"pipeline_\d{8}_\d{6}\.log", log_file.name)
    first = log_file.read_text().splitlines()[0]
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} - pipeline\.[a-z.]+ - INFO - ", first)
