"""The real services end to end through the CLI, against loopback emulators (no internet)."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.review.ratings import approve_best
from pipeline.store.db import session
from pipeline.store.models import Evaluation, PromptElement, ProviderCall, Refinement
from tests.conftest import run_cli, write_prompt_set
from tests.emulators import gemini, running
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator

PROMPTS = [
    {"id": "cube", "title": "Cube", "prompt": "A purple cube on a red table", "mood": "calm"},
    {"id": "fox", "title": "Fox", "prompt": "A fox sleeping under a pine tree", "scene": "snowy forest"},
]


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = tmp_path / "fast.toml"
    config.write_text("[providers.fal]\npoll_initial_s = 0.01\npoll_max_s = 0.05\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    with running(FalEmulator()) as fal, running(gemini.GeminiEmulator()) as gem:
        monkeypatch.setenv("FAL_KEY", FAL_KEY)
        monkeypatch.setenv("FAL_BASE_URL", fal.url)
        monkeypatch.setenv("GEMINI_API_KEY", gemini.KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", gem.url)
        yield fal, gem


def test_a_cli_run_on_fal_and_gemini_produces_the_output_tree(services, tmp_path: Path, engine) -> None:  # type: ignore[no-untyped-def]
    fal, gem = services
    out = tmp_path / "out"
    result = run_cli("run", write_prompt_set(tmp_path / "s.json", PROMPTS), "--providers", "fal", "--judge", "gemini",
                     "--refiner", "gemini", "--iterations", "2", "--output", out)
    assert result.code == 0, result.err
    for key in ("cube", "fox"):
        folder = out / "results" / key
        assert sorted(p.name for p in folder.iterdir()) == [
            "iteration_1.png", "iteration_1_evaluation.json", "iteration_1_results.json",
            "iteration_2.png", "iteration_2_evaluation.json", "iteration_2_results.json", "summary.json"]
        evaluation = json.loads((folder / "iteration_1_evaluation.json").read_text())
        assert evaluation["judge"] == "gemini"
    with session(engine) as s:
        ops = Counter((c.provider, c.operation, c.outcome) for c in s.exec(select(ProviderCall)))
        assert ops == {("gemini", "decompose", "ok"): 2, ("fal", "generate", "ok"): 4, ("gemini", "evaluate", "ok"): 4,
                       ("gemini", "refine", "ok"): 2}
        calls = s.exec(select(ProviderCall)).all()
        assert all(c.cost_usd and c.cost_usd > 0 for c in calls)  # fal from the price table, gemini from usage tokens
        cube_elements = s.exec(select(PromptElement).where(PromptElement.source == "gemini")).all()
        assert cube_elements and {e.category for e in cube_elements} >= {"entity", "attribute"}
        refinements = s.exec(select(Refinement)).all()
        assert all("purple" in r.new_prompt and r.refiner == "gemini" for r in refinements)
        assert all(e.judge == "gemini" and e.checks for e in s.exec(select(Evaluation)))
    assert len(fal.calls("POST")) == 4 and len(gem.requests) == 2 + 4 + 2


@pytest.mark.sqlite_only  # scans the database file's bytes
def test_keys_appear_nowhere_in_the_database_logs_sidecars_or_export(services, tmp_path: Path, engine, settings) -> None:  # type: ignore[no-untyped-def]
    fal, gem = services
    out = tmp_path / "out"
    assert run_cli("run", write_prompt_set(tmp_path / "s.json", PROMPTS), "--providers", "fal", "--judge", "gemini",
                   "--refiner", "gemini", "--output", out).code == 0
    with session(engine) as s:
        approve_best(s, "ana", 0.0)
        s.commit()
    zip_path = tmp_path / "export.zip"
    assert run_cli("export", "1", "--out", zip_path).code == 0
    fal.fault = gem.fault = "401"  # failures write error messages too
    assert run_cli("run", write_prompt_set(tmp_path / "t.json", PROMPTS[:1]), "--providers", "fal", "--judge", "gemini",
                   "--refiner", "gemini").code == 1
    engine.dispose()
    keys = [FAL_KEY.encode(), gemini.KEY.encode()]
    assert all(k in r.headers.get("authorization", "").encode() for r in fal.requests for k in keys[:1])  # the key was used
    files = [p for p in [*settings.data_dir.rglob("*"), *out.rglob("*")] if p.is_file()]
    assert any(p.suffix == ".log" for p in files) and any(p.name.startswith("darkroom.db") for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(k in data for k in keys), f"a key leaked into {path}"
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            assert not any(k in zf.read(name) for k in keys), f"a key leaked into the export's {name}"


def test_a_service_without_its_key_is_refused_before_anything_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          settings) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("FAL_KEY", raising=False)
    result = run_cli("run", write_prompt_set(tmp_path / "s.json", PROMPTS), "--providers", "fal")
    assert result.code == 2 and "provider fal: set FAL_KEY" in result.err
    assert not settings.data_dir.exists()
