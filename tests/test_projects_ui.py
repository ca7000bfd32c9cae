"""Projects on the dashboard: the pages filter by project with the URL carrying it; delete and prune from the pages."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.review.gallery import GalleryFilter, gallery_page
from pipeline.review.view import ViewState, decode, encode
from pipeline.store.db import session
from pipeline.store.models import Project, Run
from tests.conftest import make_prompts, run_cli, write_prompt_set
from tests.test_dashboard import AppFactory, app, db, texts  # noqa: F401  (the app fixture)


@pytest.fixture
def two_projects(tmp_path: Path) -> dict[str, int]:
    """Run 1 in "Atlas" (2 prompts × 2), run 2 in the default project (1 prompt × 1)."""
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(2)), "--iterations", "2", "--project", "Atlas").code == 0
    assert run_cli("run", write_prompt_set(tmp_path / "b.json", make_prompts(1)), "--iterations", "1").code == 0
    with session(db()) as s:
        return {p.name: p.id for p in s.exec(select(Project))}  # type: ignore[misc]


def test_the_gallery_filters_by_project_and_the_url_keeps_it(two_projects: dict[str, int]) -> None:
    atlas = two_projects["Atlas"]
    view = ViewState(filter=GalleryFilter(project_ids=(atlas,)))
    assert encode(view) == {"proj": str(atlas)} and decode(encode(view)).filter.project_ids == (atlas,)
    assert decode({"proj": "x,-3"}).filter.project_ids == ()  # a bad value is dropped, never an error
    with session(db()) as s:
        only_atlas = gallery_page(s, view.filter, per_page=50)
        everything = gallery_page(s, GalleryFilter(), per_page=50)
    assert {c.run_id for c in only_atlas.cards} == {1} and only_atlas.total == 4
    assert everything.total == 5


def test_runs_providers_export_and_storage_follow_the_project_in_the_url(app: AppFactory, two_projects: dict[str, int]) -> None:  # noqa: F811
    at = app()
    at.query_params["project"] = "Atlas"
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    assert [t.value for t in at.text if t.value.startswith("Run ")] == ["Run 1 · a"]
    at.switch_page("pages/storage.py").run()
    assert not at.exception
    assert [row["run"] for row in at.dataframe[1].value.to_dict("records")] == ["run 1 · a"]
    at.switch_page("pages/export.py").run()
    assert not at.exception and "1 run(s) of Atlas" in [t.value for t in at.text]
    at.switch_page("pages/providers.py").run()
    assert not at.exception
    at.query_params.pop("project")
    at.switch_page("pages/runs.py").run()
    assert sorted(t.value for t in at.text if t.value.startswith("Run ")) == ["Run 1 · a", "Run 2 · b"]


def test_a_project_is_created_on_its_page_and_new_runs_take_its_defaults(app: AppFactory) -> None:  # noqa: F811
    at = app("projects")
    at.text_input(key="project_new_name").input("Book two").run()
    at.number_input(key="project_new_cap").set_value(25.0).run()
    at.number_input(key="new_iterations").set_value(1).run()
    at.button[0].click().run()
    assert not at.exception
    with session(db()) as s:
        project = s.exec(select(Project).where(Project.name == "Book two")).one()
    assert project.budget_usd == 25.0 and project.defaults == {"iterations": 1}


def test_pruning_and_deleting_from_the_projects_page(app: AppFactory, two_projects: dict[str, int]) -> None:  # noqa: F811
    at = app()
    at.query_params["project"] = "Atlas"
    at.switch_page("pages/projects.py").run()
    at.toggle(key="prune_best").set_value(True).run()
    assert any("Would remove 2 image(s)" in t.value for t in at.text)
    next(b for b in at.button if b.label.startswith("Prune 2")).click().run()
    assert not at.exception
    at.switch_page("pages/projects.py").run()
    assert any("Would remove 0 image(s)" in t.value for t in at.text)
    next(b for b in at.button if b.label == "Delete project…").click().run()
    assert any("Project Atlas and everything in it goes for good: 1 run(s), 2 image(s)" in t.value for t in at.text)
    next(b for b in at.button if b.label == "Delete Atlas").click().run()
    assert not at.exception
    with session(db()) as s:
        assert [r.id for r in s.exec(select(Run))] == [2]
    assert "Atlas" not in texts(at)


def test_deleting_a_run_from_the_runs_page_names_what_goes_first(app: AppFactory, two_projects: dict[str, int]) -> None:  # noqa: F811
    at = app("runs")
    at.selectbox(key="runs_selected").set_value(2).run()
    at.button(key="runs_delete").click().run()
    assert any(t.value.startswith("Run 2 and everything of it goes for good: 1 run(s), 1 image(s)") for t in at.text)
    next(b for b in at.button if b.label == "Keep it").click().run()
    with session(db()) as s:
        assert len(s.exec(select(Run)).all()) == 2  # nothing went
    at.button(key="runs_delete").click().run()
    next(b for b in at.button if b.label == "Delete run 2").click().run()
    assert not at.exception
    with session(db()) as s:
        assert [r.id for r in s.exec(select(Run))] == [1]


def test_new_run_picks_a_project_and_takes_its_defaults(app: AppFactory) -> None:  # noqa: F811
    import json

    assert run_cli("projects", "add", "Atlas", "--default-iterations", "1").code == 0
    at = app("new_run")
    at.file_uploader[0].set_value(("two.json", json.dumps({"prompts": make_prompts(2)}).encode(), "application/json")).run()
    assert at.slider[0].value == 2  # the default project: Darkroom's own default
    at.selectbox(key="new_run_project").set_value("Atlas").run()
    assert at.slider[0].value == 1  # Atlas's default
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception
    with session(db()) as s:
        run = s.exec(select(Run)).one()
        assert s.get(Project, run.project_id).name == "Atlas" and run.config["iterations"] == 1  # type: ignore[union-attr]
