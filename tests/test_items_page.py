"""The API's items page read with Core SQL (pipeline.api.itemspage) is the same JSON as the ORM
path it replaced (pipeline.review.items.run_items serialised by pipeline.api.serialize.item),
on a run with refinements (diffs), an enhancement, grid lineage, a failed prompt and reviews."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlmodel import col, select

from pipeline.api import itemspage, serialize
from pipeline.api.schemas import ItemPage, RunOut
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.review.items import run_items
from pipeline.review.ratings import rate
from pipeline.runs import control
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, Refinement, Run, RunItem


def _seeded(tmp_path: Path, settings: Settings) -> int:
    source = tmp_path / "set.json"
    source.write_text(json.dumps({"name": "items", "prompts": [
        {"id": "grid", "prompt": "a lighthouse on a cliff at dusk"},
        {"id": "fox", "prompt": "a red fox in a snowy forest, crisp focus"},
        {"id": "owl", "prompt": "an owl on a branch under the moon"},
        {"id": "fails", "prompt": "a teal lantern on a hill"},
    ]}))
    assert main(["run", str(source), "--grid", "--iterations", "2"]) == 0
    engine = open_database(settings)
    with session(engine) as s:
        run_id = s.exec(select(Run.id).order_by(col(Run.id).desc())).first()
        assert run_id is not None
        items = s.exec(select(RunItem).where(RunItem.run_id == run_id).order_by(col(RunItem.id))).all()
        failed = items[-1]  # a failed prompt: its last step failed, no image, no score
        failed.status, failed.error_kind, failed.error_message, failed.stop_reason = "failed", "provider", "HTTP 503 from the service", ""
        last = s.exec(select(Iteration).where(Iteration.run_item_id == failed.id).order_by(col(Iteration.number).desc())).first()
        assert last is not None
        last.status, last.error_kind, last.error_message = "failed", "provider", "HTTP 503"
        s.add(Refinement(run_item_id=items[1].id or 0, from_iteration=0, new_prompt="x", refiner="offline", rationale="enhanced",
                         edits=[{"op": "enhance", "from": "a red fox in snow"}]))
        s.commit()
        images = s.exec(select(Iteration.id).where(col(Iteration.run_item_id).in_([i.id for i in items]), Iteration.status == "ok")
                        .order_by(col(Iteration.id))).all()
    assert len(images) >= 6
    with session(engine) as s:  # reviews: several reviewers, a split decision, a note only, a review cleared back to nothing
        rate(s, images[0], "alice", stars=5, decision="approved", note="lovely")
        rate(s, images[0], "bob", stars=2, decision="rejected")
        rate(s, images[0], "carol", stars=4)
        rate(s, images[1], "bob", note="too dark")
        rate(s, images[2], "alice", decision="rejected")
        rate(s, images[3], "carol", stars=3)
        rate(s, images[3], "carol", stars=None)
        rate(s, images[4], "alice", stars=1, decision="approved")
        rate(s, images[4], "bob", stars=5, decision="approved")
        s.commit()
    return run_id


def _old(engine, run_id: int, after: int, limit: int, reviewer: str, rule: str) -> list[dict]:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        return [serialize.item(v) for v in run_items(s, run_id, after_position=after, limit=limit, reviewer=reviewer, rule=rule)]


def test_the_core_items_page_is_the_same_json_as_the_orm_one(tmp_path: Path, settings: Settings) -> None:
    run_id = _seeded(tmp_path, settings)
    engine = open_database(settings)
    cases = [(-1, 100, "", "latest"), (-1, 100, "alice", "latest"), (-1, 100, "bob", "majority"), (-1, 100, "carol", "unanimous"),
             (0, 2, "alice", "latest"), (1, 100, " bob ", "majority")]
    for after, limit, reviewer, rule in cases:
        old = _old(engine, run_id, after, limit, reviewer, rule)
        with engine.connect() as conn:
            new = itemspage.items(conn, run_id, after_position=after, limit=limit, reviewer=reviewer, rule=rule)
        assert json.dumps(new) == json.dumps(old), (after, limit, reviewer, rule)
        run = RunOut.of(control.summary(engine, run_id))  # the page's bytes as the route makes them, both ways
        assert (ItemPage.model_construct(run=run, data=new, next_cursor=None).model_dump_json()
                == ItemPage(run=run, data=old, next_cursor=None).model_dump_json())
    full = _old(engine, run_id, -1, 100, "alice", "latest")
    its = [it for item in full for it in item["iterations"]]
    # the seeded run has what the comparison must cover
    assert any(item["status"] == "failed" and item["error"] for item in full)
    assert any(it["diff"] for it in its) and any(it["rationale"] == "enhanced" for it in its)
    assert any(it["reviews"] and it["reviews"]["mine"] and it["reviews"]["others"] for it in its)
    assert any(it["reviews"] and it["reviews"]["needs_tiebreak"] is False and it["reviews"]["approvals"] == 2 for it in its)
    assert any(it["evaluation"] is None for it in its) and any(it["score_delta"] is not None for it in its)
    assert len(its) > 2 * len(full)  # grid cells: lineage children beside their grids


@pytest.mark.parametrize("run_id", [0, 999])
def test_an_unknown_run_has_no_items(tmp_path: Path, settings: Settings, run_id: int) -> None:
    with open_database(settings).connect() as conn:
        assert itemspage.items(conn, run_id) == []
