"""The generate → judge → refine → generate loop end to end on the offline stack and the fake."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import re
from pathlib import Path

from PIL import Image
from sqlmodel import select

from pipeline.errors import ProviderError
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import session
from pipeline.store.models import Evaluation, Iteration, Prompt, ProviderCall, Refinement, Run, RunItem, Thumbnail
from tests.conftest import SAMPLES, create_run, make_prompts, run_cli, write_prompt_set
from tests.fakes import FakeProvider


def test_offline_run_writes_the_tree_the_sidecars_and_the_db_and_they_agree(tmp_path: Path, settings, engine) -> None:
    out = tmp_path / "outputs"
    result = run_cli("run", SAMPLES / "seed.json", "--output", out)
    assert result.code == 0, result.err
    assert "Run 1 completed: 12 completed, 0 failed, 0 blocked of 12 prompts" in result.out

    with session(engine) as s:
        run = s.get(Run, 1)
        assert (run.status, run.completed, run.total, run.config["providers"]) == ("completed", 12, 12, ["offline"])
        items = s.exec(select(RunItem, Prompt).join(Prompt, Prompt.id == RunItem.prompt_id)).all()
        assert len(items) == 12
        for item, prompt in items:
            folder = out / "results" / prompt.key
            iterations = s.exec(select(Iteration).where(Iteration.run_item_id == item.id).order_by(Iteration.number)).all()
            assert 1 <= len(iterations) <= 2
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["id"] == prompt.key and summary["status"] == "completed"
            assert summary["best_iteration"] == item.final_iteration
            assert summary["best_score"] == max(x["score"] for x in summary["iterations"])
            for it in iterations:
                image = folder / f"iteration_{it.number}.jpg"
                assert it.image_path == f"results/{prompt.key}/iteration_{it.number}.jpg"
                assert hashlib.sha256(image.read_bytes()).hexdigest() == it.sha256
                assert image.stat().st_size == it.byte_size
                results = json.loads((folder / f"iteration_{it.number}_results.json").read_text())
                assert (results["prompt"], results["provider"], results["sha256"], results["seed"]) == (
                    it.prompt_text, "offline", it.sha256, it.seed)
                ev = s.exec(select(Evaluation).where(Evaluation.iteration_id == it.id)).one()
                evaluation = json.loads((folder / f"iteration_{it.number}_evaluation.json").read_text())
                assert evaluation["overall_score"] == ev.overall_score and evaluation["judge"] == "offline"
                assert summary["iterations"][it.number - 1]["score"] == ev.overall_score
                thumb = s.get(Thumbnail, it.id)
                with Image.open(io.BytesIO(thumb.data)) as t:
                    assert (t.format, t.size, thumb.mime_type) == ("JPEG", (thumb.width, thumb.height), "image/jpeg")
                    assert max(t.size) == 320
            if len(iterations) == 2:
                ref = s.exec(select(Refinement).where(Refinement.run_item_id == item.id)).one()
                assert iterations[1].prompt_text == ref.new_prompt != iterations[0].prompt_text
                assert iterations[1].prompt_text.startswith(iterations[0].prompt_text)
                assert results["refined_from"]["rationale"] == ref.rationale
        calls = s.exec(select(ProviderCall)).all()
        ok_iterations = s.exec(select(Iteration).where(Iteration.status == "ok")).all()
        assert len([c for c in calls if c.operation == "generate"]) == len(ok_iterations)
        assert len([c for c in calls if c.operation == "evaluate"]) == len(ok_iterations)
        assert len([c for c in calls if c.operation == "refine"]) == len(s.exec(select(Refinement)).all())
        assert {c.outcome for c in calls} == {"ok"} and {c.provider for c in calls} == {"offline"}
    # The first iteration is the composed prompt: prompt, scene, mood and title by the template.
    first = json.loads((out / "results" / "scene_001" / "iteration_1_results.json").read_text())
    assert first["prompt"] == ("Neon Alley. A lone figure with a red umbrella walks past glowing neon signs reflected in puddles. "
                               "Scene: a narrow alley in a rainy city at night. Mood: melancholic.")


def test_without_output_a_run_writes_under_data_runs(settings, tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(2))
    assert run_cli("run", path, "--iterations", "1").code == 0
    assert sorted(p.name for p in (settings.runs_dir / "1" / "results" / "p000").iterdir()) == [
        "iteration_1.jpg", "iteration_1_evaluation.json", "iteration_1_results.json", "summary.json"]


def test_a_second_run_may_not_write_into_the_first_runs_output(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
    assert run_cli("run", path, "--output", tmp_path / "out", "--iterations", "1").code == 0
    again = run_cli("run", path, "--output", tmp_path / "out")
    assert again.code == 2 and "error: --output: " in again.err and "is not empty; choose another folder" in again.err


def test_iterations_and_target_score(tmp_path: Path, settings, engine) -> None:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(3))
    assert run_cli("run", path, "--iterations", "3", "--target-score", "0").code == 0
    with session(engine) as s:
        assert len(s.exec(select(Iteration)).all()) == 3  # every first image already meets 0
        assert s.exec(select(Refinement)).all() == []
    assert run_cli("run", path, "--iterations", "3", "--target-score", "10.1").code == 2


def test_a_failed_and_a_blocked_prompt_end_recorded_while_the_others_complete(tmp_path: Path, settings, engine) -> None:
    prompts = make_prompts(4)
    prompts[2]["prompt"] = "A forbidden scene"
    FakeProvider.failures.append(ProviderError("upstream exploded", kind="server", http_status=503))
    path = write_prompt_set(tmp_path / "set.json", prompts)
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "1")
    assert result.code == 1
    assert "2 completed, 1 failed, 1 blocked of 4 prompts" in result.out
    status = run_cli("status", "1").out
    assert re.search(r"p000\s+failed .*server: iteration 1: fake failed: upstream exploded", status)
    assert re.search(r"p002\s+blocked .*blocked: iteration 1: fake blocked the prompt", status)
    with session(engine) as s:
        outcomes = sorted((c.outcome, c.error_kind, c.http_status) for c in s.exec(select(ProviderCall).where(ProviderCall.operation == "generate")))
        # p002 is blocked, rewritten once by the refiner to comply, and blocked again ("forbidden" stays in it)
        assert outcomes == [("blocked", "blocked", 400), ("blocked", "blocked", 400), ("error", "server", 503), ("ok", "", None), ("ok", "", None)]
        rewrite = s.exec(select(ProviderCall).where(ProviderCall.operation == "refine")).one()
        assert (rewrite.provider, rewrite.outcome, rewrite.step_key) == ("offline", "ok", "run1/item3/it1/rewrite1")
        assert s.get(Run, 1).cost_usd == 0.02  # two fake images at $0.01; the offline judge is free
    summary = json.loads((settings.runs_dir / "1" / "results" / "p002" / "summary.json").read_text())
    assert summary["status"] == "blocked" and summary["error"]["kind"] == "blocked"


def test_a_non_image_from_a_provider_is_an_error_never_a_saved_file(tmp_path: Path, settings, engine) -> None:
    """A body that is no image is a malformed answer: logged, asked again (max_attempts = 4), then the prompt fails."""
    FakeProvider.failures.extend([b"<html>502 Bad Gateway</html>"] * 4)
    path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
    assert run_cli("run", path, "--providers", "fake", "--iterations", "1").code == 1
    with session(engine) as s:
        it = s.exec(select(Iteration)).one()
        assert (it.status, it.error_kind, it.image_path) == ("failed", "bad_image", "")
        calls = list(s.exec(select(ProviderCall).where(ProviderCall.operation == "generate")))
        assert [c.outcome for c in calls] == ["retried"] * 3 + ["error"]
        assert all("not a readable image" in c.error_message for c in calls)
    assert not list((settings.runs_dir / "1" / "results" / "p000").glob("iteration_1.*"))


def test_a_slow_prompt_never_holds_the_others_back(tmp_path: Path, settings, engine) -> None:
    """With fixed batches, p000 (held until every other prompt is done) would deadlock its batch."""
    run_id = create_run(engine, settings, make_prompts(7), tmp_path, providers=["fake"], iterations=1, concurrency=2)
    release = asyncio.Event()
    FakeProvider.gates["p000"] = release
    finished_order: list[int] = []

    def on_progress(p) -> None:  # type: ignore[no-untyped-def]
        finished_order.append(p.done)
        if p.completed == 6:
            release.set()

    async def go():  # type: ignore[no-untyped-def]
        return await asyncio.wait_for(RunExecutor(engine, settings, run_id, on_progress=on_progress).execute(), timeout=60)

    outcome = asyncio.run(go())
    assert (outcome.status, outcome.completed) == ("completed", 7)
    with session(engine) as s:
        last = s.exec(select(RunItem, Prompt).join(Prompt, Prompt.id == RunItem.prompt_id).order_by(RunItem.finished_at.desc())).first()
        assert last[1].key == "p000"


def test_unknown_provider_judge_or_refiner_is_a_usage_error_listing_the_known_ones(tmp_path: Path, settings) -> None:
    path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
    result = run_cli("run", path, "--providers", "dalle9")
    assert result.code == 2 and 'unknown provider "dalle9"; known: ' in result.err and "offline" in result.err and "fal" in result.err
    assert 'unknown judge "gpt"' in run_cli("run", path, "--judge", "gpt").err
    assert not settings.data_dir.exists()
