"""The Review view's lineage line, Compare with parent and Variations, through AppTest (no browser)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlmodel import col, select
from streamlit.testing.v1 import AppTest

from pipeline.config import Settings
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, Prompt, Run, RunItem
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set
from tests.test_review_ui import button, desk, html


@pytest.fixture
def review() -> Iterator[AppTest]:
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["reviewer"] = "ana"
    yield at
    st.cache_resource.clear()


def _open(at: AppTest, item: int, number: int) -> AppTest:
    at.run()
    at.query_params.clear()
    at.query_params.update({"item": str(item), "mode": "review", "it": str(number)})
    at.switch_page("pages/review.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_a_grid_cell_shows_its_lineage_compares_with_its_grid_and_queues_variations(tmp_path: Path, review: AppTest) -> None:
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(1)), "--iterations", "1", "--grid").code == 0
    engine = open_database(Settings.from_env())
    with session(engine) as s:
        cells = list(s.exec(select(Iteration).where(Iteration.operation == "grid-cell").order_by(col(Iteration.number))))
    assert len(cells) == 4
    cell = cells[1]
    at = _open(review, cell.run_item_id, cell.number)
    assert f"Image {cell.id}: cell 2 of 4 of the grid image {cell.parent_ids[0]}" in html(at)

    button(at, "dr_compare_parent").click().run()
    assert [p["id"] for p in desk(at)["compare"]["pair"]] == [cell.parent_ids[0], cell.id]

    button(at, "dr_variations").click().run()
    at.number_input(key="dr_variations_n").set_value(2).run()
    at.text_input(key="dr_variations_text").input("same scene, at dawn").run()
    button(at, "Make variations").click().run()
    assert not at.exception, [e.value for e in at.exception]
    with session(engine) as s:
        run = s.exec(select(Run).where(Run.name == f"Variations of image {cell.id}")).one()
        prompt = s.exec(select(Prompt).join(RunItem, col(RunItem.prompt_id) == Prompt.id).where(RunItem.run_id == run.id)).one()
    assert prompt.meta["variation_of"] == cell.id and prompt.meta["images"] == 2
    assert prompt.prompt.endswith("same scene, at dawn") and run.config["iterations"] == 1


def test_an_image_without_a_parent_cannot_be_compared_with_one(tmp_path: Path, review: AppTest) -> None:
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(1)), "--iterations", "1").code == 0
    with session(open_database(Settings.from_env())) as s:
        it = s.exec(select(Iteration)).one()
    at = _open(review, it.run_item_id, it.number)
    assert f"Image {it.id}: generated from the prompt" in html(at)
    assert button(at, "dr_compare_parent").disabled
