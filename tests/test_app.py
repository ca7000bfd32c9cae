"""The Streamlit entry point renders over a real database (AppTest, no browser)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set


def test_runs_page_shows_runs_and_labels_the_offline_stack(tmp_path: Path) -> None:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    assert "No runs yet" in at.info[0].value

    path = write_prompt_set(tmp_path / "s.json", make_prompts(2))
    assert run_cli("run", path, "--iterations", "1").code == 0
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    assert at.dataframe[0].value["status"].tolist() == ["completed"]
    assert "offline (offline: local renderer, no network)" in at.caption[0].value
    assert at.dataframe[1].value["prompt"].tolist() == ["p000", "p001"]
