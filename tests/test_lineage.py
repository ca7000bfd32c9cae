"""Lineage, grid mode and variations end to end on the offline stack (CLI, database, sidecars, export)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from sqlmodel import col, select

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.review.lineage import lineage_of
from pipeline.store.db import create_db_engine, open_database, session
from pipeline.store.migrations import migrate
from pipeline.store.models import Evaluation, Iteration, Prompt, PromptElement, Run, RunItem
from tests.fakes import FakeProvider


def _write_set(path: Path, prompts: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"name": "lineage", "prompts": prompts}), encoding="utf-8")
    return path


def _images(settings: Settings, run_id: int) -> dict[str, list[Iteration]]:
    with session(open_database(settings)) as s:
        rows = s.exec(select(Iteration, Prompt.key).join(RunItem, col(RunItem.id) == Iteration.run_item_id)
                      .join(Prompt, col(Prompt.id) == RunItem.prompt_id).where(RunItem.run_id == run_id)
                      .order_by(col(Iteration.number))).all()
    out: dict[str, list[Iteration]] = {}
    for it, key in rows:
        out.setdefault(key, []).append(it)
    return out


def _last_run(settings: Settings) -> Run:
    with session(open_database(settings)) as s:
        run = s.exec(select(Run).order_by(col(Run.id).desc())).first()
    assert run is not None
    return run


def _folder(settings: Settings, run: Run) -> Path:
    return settings.data_dir / run.output_dir


def test_grid_mode_splits_each_grid_into_four_children_and_eight_images_make_two_grids(tmp_path: Path, settings: Settings) -> None:
    source = _write_set(tmp_path / "set.json", [
        {"id": "eight", "prompt": "a lighthouse on a cliff at dusk", "images": 8},
        {"id": "four", "prompt": "a red fox in a snowy forest, crisp focus"},
    ])
    assert main(["run", str(source), "--grid", "--iterations", "2"]) == 0
    run = _last_run(settings)
    assert run.config["grid"] is True
    images = _images(settings, run.id or 0)
    folder = _folder(settings, run) / "results"

    eight = images["eight"]
    grids_1 = [it for it in eight if it.number in (1, 110)]
    assert [g.operation for g in grids_1] == ["generate", "generate"]
    assert all(g.parameters["grid"]["split"] is True for g in grids_1)
    step1_cells = [it for it in eight if it.operation == "grid-cell" and it.number < 200]
    assert len(step1_cells) == 8  # two grids of four
    for grid in grids_1:
        children = sorted((c for c in step1_cells if c.parent_ids == [grid.id]), key=lambda c: c.cell_index or 0)
        assert [c.cell_index for c in children] == [1, 2, 3, 4]
        with Image.open(folder / "eight" / Path(grid.image_path).name) as whole:
            gw, gh = whole.size
        for c in children:  # a quarter of the grid, less the gutter, within a few pixels
            assert abs((c.width or 0) - gw / 2) < gw * 0.03 and abs((c.height or 0) - gh / 2) < gh * 0.03
            assert (folder / "eight" / Path(c.image_path).name).is_file()
            sidecar = json.loads((folder / "eight" / f"iteration_{c.number}_results.json").read_text())
            assert (sidecar["operation"], sidecar["parent_ids"], sidecar["cell_index"]) == ("grid-cell", [grid.id], c.cell_index)
    with session(open_database(settings)) as s:  # what the Review view shows
        grid_lineage = lineage_of(s, grids_1[0].id or 0)
        cell_lineage = lineage_of(s, step1_cells[0].id or 0)
    assert grid_lineage is not None and cell_lineage is not None
    assert sorted(c.cell_index or 0 for c in grid_lineage.children if c.operation == "grid-cell") == [1, 2, 3, 4]
    assert [p.iteration_id for p in cell_lineage.parents] == [step1_cells[0].parent_ids[0]]
    assert f"cell {step1_cells[0].cell_index} of 4 of the grid image {step1_cells[0].parent_ids[0]}" in cell_lineage.describe()
    # The grids of two shots were asked with different seeds: different pictures.
    assert grids_1[0].sha256 != grids_1[1].sha256 and grids_1[0].seed != grids_1[1].seed

    # Iteration 2 is a refinement of the best-judged cell of iteration 1.
    step2 = [it for it in eight if it.number == 2][0]
    assert step2.operation == "refine" and len(step2.parent_ids) == 1
    assert step2.parent_ids[0] in {c.id for c in step1_cells}
    summary = json.loads((folder / "eight" / "summary.json").read_text())
    cells_listed = [e for e in summary["iterations"] if e["operation"] == "grid-cell"]
    assert len(cells_listed) == 16 and {e["cell_index"] for e in cells_listed} == {1, 2, 3, 4}  # 2 grids x 2 iterations

    # Run-level grid mode: the plain prompt became one grid of four per iteration.
    four = images["four"]
    steps = [it for it in four if it.number < 100]
    assert steps and sum(1 for it in four if it.operation == "grid-cell") == 4 * len(steps)


def test_a_response_that_is_not_a_grid_is_kept_whole_with_the_reason(tmp_path: Path, settings: Settings) -> None:
    source = _write_set(tmp_path / "set.json", [{"id": "plain", "prompt": "a bowl of lemons on a table", "grid": True}])
    assert main(["run", str(source), "--providers", "fake", "--iterations", "1"]) == 0  # the fake ignores the grid request
    assert "2x2 grid" in FakeProvider.history[0].prompt  # it was asked for
    run = _last_run(settings)
    (only,) = _images(settings, run.id or 0)["plain"]
    assert only.operation == "generate" and only.cell_index is None
    assert only.parameters["grid"]["split"] is False and "gutter" in only.parameters["grid"]["reason"]
    sidecar = json.loads((_folder(settings, run) / "results" / "plain" / "iteration_1_results.json").read_text())
    assert sidecar["grid"]["split"] is False and sidecar["operation"] == "generate"
    with session(open_database(settings)) as s:  # stored whole, and judged
        item = s.exec(select(RunItem).where(RunItem.run_id == run.id)).one()
    assert item.best_score is not None and item.final_iteration == 1


def test_bad_grid_fields_are_refused_before_launch_with_their_json_path(tmp_path: Path, settings: Settings,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_set(tmp_path / "set.json", [{"id": "ok", "prompt": "a fox"},
                                                {"id": "bad", "prompt": "a fox", "images": 0, "grid": "yes"}])
    assert main(["run", str(source), "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert "prompts[1].images: must be a whole number 1–36, not 0" in err and "prompts[1].grid: must be true or false" in err
    with session(open_database(settings)) as s:
        assert s.exec(select(Run)).first() is None  # nothing written


def test_variations_are_children_of_their_image_in_the_database_sidecars_and_export(tmp_path: Path, settings: Settings,
                                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_set(tmp_path / "set.json", [{"id": "fox", "prompt": "a red fox in a snowy forest"}])
    assert main(["run", str(source), "--iterations", "1"]) == 0
    parent = _images(settings, _last_run(settings).id or 0)["fox"][0]
    assert parent.operation == "generate" and parent.parent_ids == []

    assert main(["variations", str(parent.id), "--n", "3", "--instruction", "same fox, sitting"]) == 0
    run = _last_run(settings)
    assert "3 variation(s) of image" in capsys.readouterr().out
    (children,) = _images(settings, run.id or 0).values()
    assert len(children) == 3
    assert all(c.operation == "variation" and c.parent_ids == [parent.id] for c in children)
    assert all("same fox, sitting" in c.prompt_text for c in children)
    assert len({c.sha256 for c in children}) == 3  # three different images, not one thrice
    key = f"variations_of_{parent.id}"
    with session(open_database(settings)) as s:  # the judge was asked whether each shows the same subject, with the image as reference
        prompt = s.exec(select(Prompt).where(Prompt.key == key)).one()
        same = s.exec(select(PromptElement).where(PromptElement.prompt_id == prompt.id, PromptElement.category == "reference")).one()
        checks = [c for ev in s.exec(select(Evaluation).where(col(Evaluation.iteration_id).in_([c.id for c in children]))) for c in ev.checks]
    assert "same subject" in same.question
    assert sum(1 for c in checks if c["element"] == same.number and c["answer"] in ("yes", "no")) == 3
    sidecar = json.loads((_folder(settings, run) / "results" / key / f"iteration_{children[0].number}_results.json").read_text())
    assert (sidecar["operation"], sidecar["parent_ids"]) == ("variation", [parent.id])

    with session(open_database(settings)) as s:
        family = lineage_of(s, parent.id or 0)
    assert family is not None and {c.iteration_id for c in family.children} == {c.id for c in children}
    assert "3 child image(s) (variation)" in family.describe()

    out = tmp_path / "export.zip"
    assert main(["export", str(run.id), "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode("utf-8-sig"))))
        manifest = json.loads(zf.read("manifest.json"))
    assert {(r["operation"], r["parent_ids"]) for r in rows} == {("variation", str(parent.id))}
    assert {r["image_id"] for r in rows} == {str(c.id) for c in children}
    assert all(img["parent_ids"] == [parent.id] and img["operation"] == "variation" for img in manifest["images"])


def test_variations_refuse_an_unknown_image_or_a_bad_count(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["variations", "999"]) == 2
    assert "there is no image 999" in capsys.readouterr().err
    assert main(["variations", "1", "--n", "0"]) == 2
    assert "--n" in capsys.readouterr().err


@pytest.mark.empty_database
def test_an_older_database_gets_lineage_from_its_iterations(settings: Settings) -> None:
    engine = create_db_engine(settings.database_url)
    migrate(engine, upto="m007_references")
    now = "2026-01-01 00:00:00"
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO prompt_set (id, name, source, sha256, prompt_count, meta, created_at) VALUES (1, 's', '', 'x', 1, '{}', :t)"),
                     {"t": now})
        conn.execute(sa.text("INSERT INTO prompt (id, prompt_set_id, position, key, title, scene, mood, prompt, negative_prompt, tags, meta, "
                             "style, template, characters) VALUES (1, 1, 0, 'p', '', '', '', 'a fox', '', '[]', '{}', '', '', '[]')"))
        conn.execute(sa.text("INSERT INTO run (id, prompt_set_id, name, status, config, output_dir, total, completed, failed, blocked, cost_usd, "
                             "error, cancel_requested, owner, created_at) VALUES (1, 1, '', 'completed', '{}', 'r', 1, 1, 0, 0, 0, '', FALSE, '', :t)"),
                     {"t": now})
        conn.execute(sa.text("INSERT INTO run_item (id, run_id, prompt_id, status, cost_usd, error_kind, error_message, stop_reason) "
                             "VALUES (1, 1, 1, 'completed', 0, '', '', '')"))
        for number in (1, 2, 3):
            conn.execute(sa.text("INSERT INTO iteration (id, run_item_id, number, prompt_text, negative_prompt, provider, model, parameters, status, "
                                 "image_path, mime_type, sha256, error_kind, error_message, started_at, routing) VALUES "
                                 "(:id, 1, :n, 'a fox', '', 'offline', '', '{}', 'ok', '', '', '', '', '', :t, '{}')"), {"id": number * 10, "n": number, "t": now})
    engine.dispose()
    with session(open_database(settings)) as s:
        rows = {it.number: it for it in s.exec(select(Iteration))}
    assert (rows[1].operation, rows[1].parent_ids, rows[1].cell_index) == ("generate", [], None)
    assert (rows[2].operation, rows[2].parent_ids) == ("refine", [10])
    assert (rows[3].operation, rows[3].parent_ids) == ("refine", [20])


def test_the_judge_says_whether_the_image_shows_the_reference_subject_and_the_refiner_gets_the_answer() -> None:
    import asyncio

    from pipeline.components import EvaluationRequest, ReferenceImage, RefinementRequest
    from pipeline.prompts.elements import reference_elements, visual_elements
    from pipeline.services.offline.judge import OfflineJudge
    from pipeline.services.offline.refiner import OfflineRefiner
    from pipeline.services.offline.render import render

    prompt = "a red fox in a snowy forest"
    reference = ReferenceImage(render(prompt, seed=1, width=512, height=512), "image/jpeg", "subject", "fox.jpg")
    elements = visual_elements(prompt)
    elements += reference_elements(len(elements) + 1, ["Mira"], own_subject=False)
    asked = elements[-1]
    assert asked.category == "reference" and "same character (Mira)" in asked.question

    def judge(image: bytes):  # type: ignore[no-untyped-def]
        request = EvaluationRequest(original_prompt=prompt, sent_prompt=prompt, elements=tuple(elements), image=image,
                                    mime_type="image/jpeg", requested_width=512, requested_height=512, reference_images=(reference,))
        return asyncio.run(OfflineJudge(Settings.from_env().component("judges", "offline")).evaluate(request))

    same = judge(render(prompt, seed=9, width=512, height=512))
    other = judge(render("a neon city street at night, vivid colours", seed=3, width=512, height=512))
    same_answer, other_answer = (next(c for c in j.checks if c.element == asked.number) for j in (same, other))
    assert same_answer.answer == "yes" and other_answer.answer == "no"
    assert "likeness" in other_answer.evidence
    assert any(i.element == asked.number for i in other.issues) and not any(i.element == asked.number for i in same.issues)

    failed = tuple(c for c in other.checks if c.answer != "yes")
    refined = asyncio.run(OfflineRefiner({}).refine(RefinementRequest(original_prompt=prompt, current_prompt=prompt, judgement=other,
                                                                      failed_checks=failed, history=())))
    assert "same subject as in the reference image" in refined.prompt


def test_a_resumed_grid_step_cuts_a_lost_cell_again_without_asking_the_provider(tmp_path: Path, settings: Settings) -> None:
    from pipeline.store.models import ProviderCall

    source = _write_set(tmp_path / "set.json", [{"id": "fox", "prompt": "a red fox in a snowy forest", "grid": True}])
    assert main(["run", str(source), "--iterations", "1"]) == 0
    run = _last_run(settings)
    cells = [it for it in _images(settings, run.id or 0)["fox"] if it.operation == "grid-cell"]
    lost = cells[1]
    path = _folder(settings, run) / lost.image_path
    path.unlink()
    engine = open_database(settings)
    with engine.begin() as conn:  # as if the process had died before the prompt finished
        conn.execute(sa.text("UPDATE run SET status = 'interrupted' WHERE id = :r"), {"r": run.id})
        conn.execute(sa.text("UPDATE run_item SET status = 'pending' WHERE run_id = :r"), {"r": run.id})
    with session(engine) as s:
        generations = len(s.exec(select(ProviderCall).where(ProviderCall.operation == "generate")).all())
    assert main(["resume", str(run.id)]) == 0
    again = {it.id: it for it in _images(settings, run.id or 0)["fox"] if it.operation == "grid-cell"}
    assert path.is_file() and again[lost.id].sha256 == lost.sha256 and again[lost.id].cell_index == lost.cell_index
    with session(engine) as s:
        assert len(s.exec(select(ProviderCall).where(ProviderCall.operation == "generate")).all()) == generations
