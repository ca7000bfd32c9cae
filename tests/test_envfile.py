""".env in the working directory: read beside secrets.toml, never over a real variable, its keys redacted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pipeline import envfile
from pipeline.envfile import load_env_file
from pipeline.errors import ProviderError
from pipeline.redaction import redact
from tests.conftest import run_cli

FAKE_KEY = "fal-test-0000-not-a-real-key"


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``.env`` where the tests read it (conftest points ``.env`` of the working directory at the test's folder)."""
    for name in ("FAL_KEY", "DARKROOM_LOG_LEVEL_UNUSED", "ELSEWHERE"):  # restored to absent after the test
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    path = envfile.ENV_FILE
    path.write_text(f'# keys for this studio\nexport FAL_KEY="{FAKE_KEY}"\nDARKROOM_DATA_DIR=/nowhere/else\n'
                    "ELSEWHERE=${FAL_KEY}-copy\n", encoding="utf-8")
    return path


def test_variables_come_from_env_but_never_over_real_ones(env_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    real_data_dir = os.environ["DARKROOM_DATA_DIR"]
    with caplog.at_level(logging.INFO, logger="pipeline.envfile"):
        added = load_env_file()
    assert added == ["ELSEWHERE", "FAL_KEY"]
    assert os.environ["FAL_KEY"] == FAKE_KEY and os.environ["ELSEWHERE"] == f"{FAKE_KEY}-copy"
    assert os.environ["DARKROOM_DATA_DIR"] == real_data_dir  # the real environment wins
    assert FAKE_KEY not in caplog.text and "FAL_KEY" in caplog.text  # names are logged, values never


def test_a_key_from_env_is_redacted_like_any_other(env_file: Path) -> None:
    assert redact(f"Invalid key {FAKE_KEY}") == "Invalid key [FAL_KEY redacted]"  # even before it is loaded
    load_env_file()
    assert FAKE_KEY not in str(ProviderError(f"401: bad key {FAKE_KEY}", kind="auth"))


def test_the_command_line_reads_env(env_file: Path) -> None:
    result = run_cli("status")
    assert result.code == 0 and os.environ.get("FAL_KEY") == FAKE_KEY


def test_no_env_file_changes_nothing() -> None:
    assert not envfile.ENV_FILE.exists() and load_env_file() == []
