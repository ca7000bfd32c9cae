"""Why each prompt stopped is recorded, and shown wherever its end is: database, summary.json, status, pages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline import registry
from pipeline.components import RefinedPrompt, RefinementRequest, Refiner
from pipeline.config import Settings
from pipeline.display import STOP_REASONS
from pipeline.errors import ProviderError
from pipeline.prompts.promptset import load_file
from pipeline.runs.records import RunConfig, create_run, import_prompt_set
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import open_database, session
from pipeline.store.migrations import migrate
from pipeline.store.models import Prompt, RunItem
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set
from tests.fakes import FakeProvider


class EchoRefiner(Refiner):
    """A refiner with nothing to change: it hands the prompt back as it got it."""

    name = "echo"
    label = "test: returns the prompt unchanged"

    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        return RefinedPrompt(prompt=request.current_prompt, rationale="nothing to change", model="echo-1", cost_usd=0.0)


@pytest.fixture
def echo() -> Iterator[None]:
    registry.refiners.register(EchoRefiner)
    yield
    registry.refiners.unregister("echo")


def reasons(settings: Settings, run_id: int) -> dict[str, tuple[str, str]]:
    """prompt id -> (status, stop_reason), from the database."""
    engine = open_database(settings)
    with session(engine) as s:
        rows = s.exec(select(Prompt.key, RunItem.status, RunItem.stop_reason).join(RunItem, RunItem.prompt_id == Prompt.id)
                      .where(RunItem.run_id == run_id)).all()
    engine.dispose()
    return {key: (status, reason) for key, status, reason in rows}


def summary_json(settings: Settings, run_id: int, key: str) -> dict:  # type: ignore[type-arg]
    return json.loads((settings.runs_dir / str(run_id) / "results" / key / "summary.json").read_text(encoding="utf-8"))


def test_why_each_prompt_stopped_is_in_the_database_summary_json_and_status(tmp_path: Path, settings: Settings, echo: None) -> None:
    # Run 1: three iterations allowed, the refiner changes nothing: each prompt stops after the first.
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(2)), "--iterations", "3", "--refiner", "echo").code == 0
    # Run 2: the target score is reached at once.
    assert run_cli("run", write_prompt_set(tmp_path / "b.json", make_prompts(1, title="b")), "--iterations", "3",
                   "--target-score", "0").code == 0
    # Run 3: every iteration used (the offline refiner always changes something in one round), one prompt
    # blocked with no rewrite allowed, one failed for good.
    FakeProvider.failures.append(ProviderError("the request is malformed", kind="bad_request", http_status=400))
    prompts = make_prompts(3, title="c")
    prompts[2]["prompt"] = "a forbidden lantern"
    result = run_cli("run", write_prompt_set(tmp_path / "c.json", prompts), "--providers", "fake", "--iterations", "1",
                     "--block-rewrites", "0", "--concurrency", "1")
    assert result.code == 1, result.err

    assert reasons(settings, 1) == {"p000": ("completed", "prompt_unchanged"), "p001": ("completed", "prompt_unchanged")}
    assert reasons(settings, 2) == {"p000": ("completed", "target_reached")}
    assert reasons(settings, 3) == {"p000": ("failed", "failed"), "p001": ("completed", "iterations_done"), "p002": ("blocked", "blocked")}

    summary = summary_json(settings, 1, "p000")
    assert (summary["stop_reason"], summary["stopped_because"]) == ("prompt_unchanged", STOP_REASONS["prompt_unchanged"])
    assert len(summary["iterations"]) == 1
    assert summary_json(settings, 3, "p002")["stop_reason"] == "blocked"

    status = run_cli("status", "1")
    assert "STOPPED" in status.out and "prompt_unchanged" in status.out
    assert f"prompt_unchanged: {STOP_REASONS['prompt_unchanged']}" in status.out
    detail = json.loads(run_cli("status", "3", "--json").out)
    assert {p["prompt_id"]: p["stop_reason"] for p in detail["prompts"]} == {"p000": "failed", "p001": "iterations_done",
                                                                             "p002": "blocked"}


def test_a_prompt_left_waiting_says_why_budget_or_cancel(tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "prices.toml"
    config.write_text("[providers.fake]\nprice_per_image = 0.01\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    path = write_prompt_set(tmp_path / "set.json", make_prompts(4))
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "1", "--budget", "0.02")
    assert "paused" in result.out + result.err
    got = reasons(Settings.from_env(), 1)
    assert [got[k] for k in ("p000", "p001")] == [("completed", "iterations_done")] * 2
    assert got["p002"] == ("pending", "budget")  # the prompt whose next call would have passed the cap
    assert summary_json(settings, 1, "p002")["stop_reason"] == "budget"

    # A run cancelled while a prompt's generation is in flight: that prompt waits, "cancelled".
    settings = Settings.from_env()
    engine = open_database(settings)
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, load_file(write_prompt_set(tmp_path / "two.json", make_prompts(2, title="x")))),
                         RunConfig(providers=["fake"], iterations=1, concurrency=1))
        s.commit()
        run_id = run.id
    FakeProvider.reset()
    FakeProvider.gates["p000"] = asyncio.Event()  # never set: p000's generation is in flight until cancelled
    executor = RunExecutor(engine, settings, run_id)

    async def go() -> None:
        task = asyncio.create_task(executor.execute())
        while not FakeProvider.history:
            await asyncio.sleep(0.01)
        executor.cancel()
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(go())
    engine.dispose()
    got = reasons(settings, run_id)
    assert got["p000"] == ("pending", "cancelled")
    assert got["p001"] == ("pending", "")  # never started: nothing stopped it


def test_an_earlier_database_learns_why_its_failed_and_blocked_prompts_stopped(tmp_path: Path, settings: Settings) -> None:
    FakeProvider.failures.append(ProviderError("the request is malformed", kind="bad_request", http_status=400))
    assert run_cli("run", write_prompt_set(tmp_path / "set.json", make_prompts(2)), "--providers", "fake", "--iterations", "1",
                   "--concurrency", "1").code == 1
    engine = open_database(settings)
    with engine.begin() as conn:  # as an earlier version left it: no stop reasons
        conn.exec_driver_sql("UPDATE run_item SET stop_reason = ''")
        conn.exec_driver_sql("DELETE FROM schema_migration WHERE name = 'm006_stop_reason'")
        conn.exec_driver_sql("ALTER TABLE run_item DROP COLUMN stop_reason")
    assert migrate(engine) == ["m006_stop_reason"]
    engine.dispose()
    assert reasons(settings, 1) == {"p000": ("failed", "failed"), "p001": ("completed", "")}


def test_the_review_page_says_why_the_prompt_stopped(tmp_path: Path, echo: None) -> None:
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(1)), "--iterations", "2", "--refiner", "echo").code == 0
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.session_state["reviewer"] = "ana"
        at.run()
        at.switch_page("pages/review.py").run()
        assert not at.exception, [e.value for e in at.exception]
        assert f"Stopped: {STOP_REASONS['prompt_unchanged']}" in [c.value for c in at.caption]
    finally:
        st.cache_resource.clear()
