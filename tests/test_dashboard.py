"""Every dashboard page through Streamlit's AppTest (no browser), over a real database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlmodel import func, select
from streamlit.testing.v1 import AppTest

from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, PromptSet, Rating, Run
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set

PAGES = ["new_run", "runs", "gallery", "export", "providers", "projects", "storage", "settings"]
TITLES = {"new_run": "New run", "runs": "Runs", "gallery": "Gallery", "export": "Export", "providers": "Providers",
          "projects": "Projects", "storage": "Storage", "settings": "Settings"}

AppFactory = Callable[..., AppTest]


@pytest.fixture
def app() -> Iterator[AppFactory]:
    """A fresh AppTest per call; process-wide singletons (engine, runner thread) are released after the test."""
    st.cache_resource.clear()

    def make(page: str | None = None, reviewer: str = "") -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        if reviewer:
            at.session_state["reviewer"] = reviewer
        at.run()
        if page:
            at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield make
    st.cache_resource.clear()  # on_release stops the background runner


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """Two runs on the offline stack: 6 tagged prompts × 2 iterations, and 2 more prompts × 1."""
    prompts = make_prompts(6)
    for i, p in enumerate(prompts):
        p["tags"] = ["night"] if i % 2 else ["day"]
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", prompts), "--iterations", "2").code == 0
    assert run_cli("run", write_prompt_set(tmp_path / "b.json", make_prompts(2)), "--iterations", "1").code == 0
    return tmp_path


def db():  # type: ignore[no-untyped-def]
    from pipeline.config import Settings

    return open_database(Settings.from_env())


def settled_run() -> Run:
    """The only run, once the background thread has taken it to an end state (or after 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        with session(db()) as s:
            run = s.exec(select(Run)).one()
        if run.status not in ("queued", "running") or time.monotonic() > deadline:
            return run
        time.sleep(0.1)


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "error", "success", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_database(app: AppFactory, page: str) -> None:
    at = app(page)
    assert at.title[0].value == TITLES[page]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_a_seeded_database(app: AppFactory, seeded: Path, page: str) -> None:
    at = app(page, reviewer="ana")
    assert at.title[0].value == TITLES[page]
    assert "No runs yet" not in texts(at) and "Nothing" not in texts(at)


def test_navigation_has_the_pages_in_order() -> None:
    source = (ROOT / "app.py").read_text()
    titles = [line.split('title="')[1].split('"')[0] for line in source.splitlines() if "st.Page(" in line
              and 'visibility="hidden"' not in line]  # Review is reached from the Gallery, not the menu
    assert titles == ["New run", "Runs", "Gallery", "Export", "Providers", "Projects", "Storage", "Settings"]


def test_invalid_upload_lists_every_problem_with_its_path_and_saves_nothing(app: AppFactory, settings) -> None:  # type: ignore[no-untyped-def]
    at = app("new_run")
    bad = {"prompts": [{"id": "a", "prompt": "x"}, {"id": "A", "prompt": ""}, {"title": "no id"}]}
    at.file_uploader[0].set_value(("bad.json", json.dumps(bad).encode(), "application/json")).run()
    assert not at.exception
    assert "nothing was saved" in at.error[0].value and any("bad.json" in t.value for t in at.text)
    table = at.dataframe[0].value
    paths = table["where (JSON path)"].tolist()
    assert "prompts[1].id" in paths and "prompts[2].id" in paths and "prompts[1].prompt" in paths
    assert not [b for b in at.button if b.label == "Launch run"]
    with session(db()) as s:
        assert s.exec(select(func.count()).select_from(PromptSet)).one() == 0
        assert s.exec(select(func.count()).select_from(Run)).one() == 0
    assert not settings.runs_dir.exists()


def test_valid_upload_previews_estimates_and_launches_a_run_the_background_thread_completes(app: AppFactory) -> None:
    at = app("new_run")
    prompts = make_prompts(3, title="Lantern", mood="calm")
    at.file_uploader[0].set_value(("three.json", json.dumps({"prompts": prompts}).encode(), "application/json")).run()
    assert not at.exception
    preview = at.dataframe[0].value
    assert preview["id"].tolist() == ["p000", "p001", "p002"]
    assert preview["sent to the provider"][0].startswith("Lantern. A red lantern")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Calls (at most)"] == "15"  # 3 prompts × (2 generations + 2 judgements + 1 refinement)
    assert metrics["Estimated cost (at most)"] == "$0.0000"
    assert "offline (offline" in at.multiselect[0].format_func("offline")
    [launch] = [b for b in at.button if b.label == "Launch run"]
    launch.click().run()
    assert not at.exception
    run = settled_run()
    assert (run.status, run.completed, run.total) == ("completed", 3, 3)
    assert run.config["providers"] == ["offline"]


def test_runs_page_shows_progress_prompts_and_offers_resume_only_when_it_applies(app: AppFactory, seeded: Path) -> None:
    at = app("runs")
    assert "8 completed" not in texts(at)  # runs are separate
    assert "6/6 done" in texts(at) and "2/2 done" in texts(at)
    prompts_table = at.dataframe[-1].value
    assert prompts_table["prompt"].tolist() == ["p000", "p001"]  # newest run selected first
    assert set(prompts_table["status"]) == {"completed"}
    [resume] = [b for b in at.button if b.label == "Resume"]
    assert resume.disabled  # completed with nothing failed: nothing to resume


def gallery_cards(at: AppTest) -> list[dict]:
    """The cards the Gallery's grid component was drawn with."""
    [grid] = [e for e in at.get("bidi_component") if e.proto.component_name == "darkroom_card_grid"]
    return json.loads(grid.proto.json)["cards"]


def gallery_count(at: AppTest) -> int:
    count = next(h.proto.body for h in at.get("html") if 'data-testid="drGalleryCount"' in h.proto.body)
    return int(count.split(">")[1].split()[0].replace(",", ""))


def review_data(at: AppTest) -> dict:
    [desk] = [e for e in at.get("bidi_component") if e.proto.component_name == "darkroom_review_desk"]
    return json.loads(desk.proto.json)


def open_review(at: AppTest, card: dict) -> AppTest:
    """What a click on a card's image does: Review, with the grid's view in the URL."""
    at.query_params.update({"item": str(card["item"]), "mode": "review", "it": str(card["number"])})
    at.switch_page("pages/review.py").run()
    assert not at.exception
    return at


def test_gallery_filters_change_what_the_grid_shows(app: AppFactory, seeded: Path) -> None:
    at = app("gallery", reviewer="ana")
    assert gallery_count(at) == 14
    assert len(gallery_cards(at)) == 14
    at.multiselect(key="g_runs").set_value([1]).run()
    assert gallery_count(at) == 12
    at.multiselect(key="g_tags").set_value(["night"]).run()
    assert gallery_count(at) == 6
    at.toggle(key="g_best").set_value(True).run()
    assert gallery_count(at) == 3
    at.text_input(key="g_text").set_value("number 3").run()
    assert gallery_count(at) == 1
    at.text_input(key="g_text").set_value("no such words").run()
    assert gallery_count(at) == 0 and gallery_cards(at) == []


def test_rating_and_decision_are_saved_with_the_reviewer_and_drive_the_filters(app: AppFactory, seeded: Path) -> None:
    at = open_review(app("gallery", reviewer="ana"), gallery_cards(app("gallery", reviewer="ana"))[0])
    assert "p000 · " in " ".join(h.proto.body for h in at.get("html"))  # newest run first: run 2's first prompt
    it_id = review_data(at)["iterations"][0]["id"]
    next(f for f in at.feedback if f.key.startswith(f"dr_stars_{it_id}_")).set_value(3).run()  # the fourth star (0-based)
    at.button(key="dr_approve").click().run()
    next(t for t in at.text_input if t.key.startswith(f"dr_note_{it_id}_")).set_value("keep").run()
    assert not at.exception
    with session(db()) as s:
        [rating] = s.exec(select(Rating)).all()
    assert (rating.iteration_id, rating.reviewer, rating.stars, rating.decision, rating.note) == (it_id, "ana", 4, "approved", "keep")

    grid = app("gallery", reviewer="ana")
    grid.multiselect(key="g_decision").set_value(["approved"]).run()
    assert gallery_count(grid) == 1
    grid.multiselect(key="g_decision").set_value([]).run()
    grid.multiselect(key="g_stars").set_value([4]).run()
    assert gallery_count(grid) == 1


def test_review_buttons_are_disabled_until_the_reviewer_gives_a_name(app: AppFactory, seeded: Path) -> None:
    at = open_review(app("gallery"), gallery_cards(app("gallery"))[0])
    assert "Enter your name" in texts(at)
    assert all(b.disabled for b in at.button if b.label in ("Approve", "Reject"))


def test_detail_shows_the_refinement_diff_and_score_change(app: AppFactory, seeded: Path) -> None:
    at = app("gallery", reviewer="ana")
    at.multiselect(key="g_runs").set_value([1]).run()
    first, second = review_data(open_review(at, gallery_cards(at)[0]))["iterations"]
    assert first["score"] is not None and second["delta"] is not None
    assert any(op == "insert" for op, _ in second["details"]["diff"])
    assert "words" in second["details"]["diff_counts"]


def test_export_page_builds_a_zip_and_says_so_when_nothing_is_approved(app: AppFactory, seeded: Path, settings) -> None:  # type: ignore[no-untyped-def]
    at = app("export")
    at.button[0].click().run()
    assert "Nothing was exported" in at.warning[0].value and any("no approved images" in t.value for t in at.text)
    assert not list(settings.exports_dir.glob("*.zip"))
    at.radio(key="export_selection").set_value("best").run()
    next(b for b in at.button if b.label == "Build zip").click().run()
    assert not at.exception
    assert "2 image(s)" in at.success[0].value
    [zip_path] = settings.exports_dir.glob("*.zip")
    assert zip_path.name.startswith("darkroom_run-2_best_")
    assert at.get("download_button")


def test_providers_page_charts_the_call_log(app: AppFactory, seeded: Path) -> None:
    at = app("providers")
    assert len(at.get("plotly_chart")) == 5  # stars-vs-score waits for ratings
    assert {m.label for m in at.metric} == {"Calls logged", "Succeeded", "Spent", "Runs"}
    with session(db()) as s:
        for i, it in enumerate(s.exec(select(Iteration)).all()):
            s.add(Rating(iteration_id=it.id, reviewer="ana", stars=1 + i % 5))
        s.commit()
    at = app("providers")
    assert len(at.get("plotly_chart")) == 6
    assert any("Spearman" in c.value for c in at.caption)


def test_settings_page_shows_whether_a_key_is_present_never_its_value(app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import registry
    from tests.fakes import KeyedProvider

    registry.providers.register(KeyedProvider)
    try:
        monkeypatch.setenv("KEYED_API_KEY", "not-a-real-key-SECRETVALUE")
        at = app("settings")
        table = at.dataframe[0].value
        row = table[table["name"].str.startswith("keyed")].iloc[0]
        assert row["key"] == "KEYED_API_KEY: present" and row["state"] == "ready"
        assert "SECRET" not in table.to_csv() and "SECRET" not in texts(at)
        monkeypatch.delenv("KEYED_API_KEY")
        at = app("settings")
        table = at.dataframe[0].value
        assert table[table["name"].str.startswith("keyed")].iloc[0]["state"] == "missing KEYED_API_KEY"
        new_run = app("new_run")
        new_run.segmented_control(key="new_run_source").set_value("Samples").run()
        offered = [str(o) for o in new_run.multiselect[0].options]
        assert any(o.startswith("offline") for o in offered)
        assert not any(o.startswith("keyed") for o in offered)  # only configured services are offered
        monkeypatch.setenv("KEYED_API_KEY", "not-a-real-key-SECRETVALUE")
        new_run = app("new_run")
        new_run.segmented_control(key="new_run_source").set_value("Samples").run()
        assert any(str(o).startswith("keyed") for o in new_run.multiselect[0].options)
    finally:
        registry.providers.unregister("keyed")


def test_bulk_approve_asks_first_then_approves_each_prompts_best(app: AppFactory, seeded: Path) -> None:
    at = app("gallery", reviewer="ana")
    at.toggle(key="g_best").set_value(True).run()
    at.radio(key="g_bulk_scope").set_value("filter").run()
    at.selectbox(key="g_bulk_action").set_value("approve").run()
    next(b for b in at.button if b.label == "Review and apply…").click().run()
    assert not at.exception
    with session(db()) as s:
        assert s.exec(select(func.count()).select_from(Rating)).one() == 0  # nothing yet: a confirmation comes first
    assert "all 8 images matching: every run · best only" in [t.value for t in at.text]
    next(b for b in at.button if b.label == "Apply to 8 images").click().run()
    assert not at.exception
    with session(db()) as s:
        ratings = s.exec(select(Rating)).all()
    assert len(ratings) == 8 and {(r.reviewer, r.decision) for r in ratings} == {("ana", "approved")}


def test_paging_then_narrowing_the_filter_shows_the_last_page_there_is(app: AppFactory, seeded: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "pages.toml"
    config.write_text("[review]\npage_size = 12\npage_sizes = [12, 24]\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    at = app("gallery", reviewer="ana")
    at.query_params.update({"page": "2"})
    at.run()
    assert gallery_count(at) == 14 and len(gallery_cards(at)) == 2
    at.multiselect(key="g_runs").set_value([2]).run()  # 2 images: one page
    assert not at.exception
    assert "page 1 of 1" in next(h.proto.body for h in at.get("html") if "drGalleryCount" in h.proto.body)
    assert len(gallery_cards(at)) == 2


def test_settings_test_connection_asks_the_service(app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.emulators import running
    from tests.emulators.comfyui import ComfyUIEmulator

    with running(ComfyUIEmulator()) as emulator:
        monkeypatch.setenv("COMFYUI_URL", emulator.url)
        at = app("settings")
        at.button(key="probe-providers-comfyui").click().run()
        assert not at.exception
        assert at.success and any("reachable" in t.value for t in at.text)  # the service's words: text, not markdown
        assert [r.path for r in emulator.requests] == ["/object_info/CheckpointLoaderSimple"]  # lists the checkpoints too
    assert at.button(key="probe-providers-fal").disabled  # no FAL_KEY here


def test_a_run_on_real_services_launches_from_the_dashboard(app: AppFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.emulators import gemini, running
    from tests.emulators.fal import KEY as FAL_KEY
    from tests.emulators.fal import FalEmulator

    config = tmp_path / "fast.toml"
    config.write_text("[providers.fal]\npoll_initial_s = 0.01\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    with running(FalEmulator()) as fal, running(gemini.GeminiEmulator()) as gem:
        for k, v in {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": fal.url, "GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": gem.url}.items():
            monkeypatch.setenv(k, v)
        at = app("new_run")
        at.file_uploader[0].set_value(("two.json", json.dumps({"prompts": make_prompts(2)}).encode(), "application/json")).run()
        offered = {str(o).split(" ")[0] for o in at.multiselect[0].options}
        assert {"fal", "gemini", "offline", "comfyui"} <= offered and "worker" not in offered  # no WORKER_URL set
        at.multiselect[0].set_value(["fal"]).run()
        at.selectbox[0].set_value("gemini").run()  # judge
        at.selectbox[1].set_value("gemini").run()  # refiner
        assert {m.label: m.value for m in at.metric}["Estimated cost (at most)"] != "$0.0000"
        next(b for b in at.button if b.label == "Launch run").click().run()
        assert not at.exception
        run = settled_run()
        assert (run.status, run.completed) == ("completed", 2), run.error
        assert run.config["providers"] == ["fal"] and run.config["judge"] == "gemini"
        assert len(fal.calls("POST")) >= 2 and gem.requests


def test_new_run_stores_fallback_chains_routing_rewrites_and_a_budget(app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_BASE_URL", "http://127.0.0.1:9")  # configured (no key needed), never called: offline comes first
    at = app("new_run")
    at.file_uploader[0].set_value(("two.json", json.dumps({"prompts": make_prompts(2)}).encode(), "application/json")).run()
    by_label = {w.label: w for w in (*at.multiselect, *at.radio, *at.number_input, *at.toggle)}
    by_label["Fallback judges (in order)"].set_value(["ollama"])
    by_label["Fallback refiners (in order)"].set_value(["ollama"])
    by_label["Routing"].set_value("pool")
    by_label["Rewrites after a content block"].set_value(0)
    by_label["Cap the spending"].set_value(True)
    at.run()
    next(w for w in at.number_input if w.label == "Budget (USD)").set_value(2.5).run()
    next(b for b in at.button if b.label == "Launch run").click().run()
    assert not at.exception
    with session(db()) as s:
        config = s.exec(select(Run)).one().config
    assert (config["judge"], config["judge_fallbacks"], config["refiner"], config["refiner_fallbacks"]) == ("offline", ["ollama"], "offline", ["ollama"])
    assert (config["routing"], config["block_rewrites"], config["budget_usd"]) == ("pool", 0, 2.5)


def test_a_run_paused_by_its_budget_resumes_from_the_runs_page_with_a_higher_one(app: AppFactory, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "prices.toml"
    config.write_text("[providers.fake]\nprice_per_image = 0.01\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    result = run_cli("run", write_prompt_set(tmp_path / "set.json", make_prompts(4)), "--providers", "fake", "--iterations", "1",
                     "--concurrency", "1", "--budget", "0.02")
    assert result.code == 130
    at = app("runs")
    assert at.warning and any("budget of $0.0200 reached" in t.value for t in at.text)
    budget = next(w for w in at.number_input if w.label == "Budget (USD)")
    budget.set_value(1.0).run()
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception
    run = settled_run()
    assert (run.status, run.completed, run.config["budget_usd"], round(run.cost_usd, 4)) == ("completed", 4, 1.0, 0.04)


def test_a_run_whose_every_prompt_failed_shows_failed_with_an_empty_bar(app: AppFactory, tmp_path: Path) -> None:
    from pipeline.errors import ProviderError
    from tests.fakes import FakeProvider

    for _ in range(2):
        FakeProvider.failures.append(ProviderError("refused", kind="bad_request", http_status=400))
    assert run_cli("run", write_prompt_set(tmp_path / "s.json", make_prompts(2)), "--providers", "fake", "--iterations", "1").code == 1
    at = app("runs")
    shown = texts(at)
    assert "failed" in shown and ":green[:material/check_circle:]" not in shown, "no green check for a run with nothing completed"
    [bar] = at.get("progress")
    assert bar.value == 0 and "2 failed" in bar.text, "the bar fills with completed prompts only"
    assert any("No prompt completed" in e.value for e in at.error)


def test_new_run_names_a_bad_setting_by_its_widget_not_a_cli_flag(app: AppFactory) -> None:
    at = app("new_run")
    at.file_uploader[0].set_value(("two.json", json.dumps({"prompts": make_prompts(2)}).encode(), "application/json")).run()
    at.multiselect[0].set_value([]).run()
    assert "Provider chain: name at least one provider" in [t.value for t in at.text]
    assert not any("--" in t.value for t in at.text)
    assert next(b for b in at.button if b.label == "Launch run").disabled


def test_cancel_on_the_runs_page_ends_the_calls_in_flight_within_seconds(app: AppFactory, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.config import Settings
    from pipeline.store.models import ProviderCall
    from tests.conftest import create_run
    from tests.fakes import FakeProvider

    config = tmp_path / "quick.toml"
    config.write_text("[runner]\nstop_grace_s = 0.5\ncancel_wait_s = 0.5\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    FakeProvider.delays = {"p000": 600.0}  # a provider that never answers
    run_id = create_run(db(), Settings.from_env(), make_prompts(1), tmp_path, providers=["fake"], iterations=1)
    at = app("runs")
    deadline = time.monotonic() + 30
    while not FakeProvider.history:
        assert time.monotonic() < deadline, "the background runner did not start the run"
        time.sleep(0.05)
    at.run()
    t0 = time.monotonic()
    next(b for b in at.button if b.label == "Cancel").click().run()
    assert not at.exception
    run = settled_run()
    assert run.status == "cancelled" and time.monotonic() - t0 < 4
    with session(db()) as s:
        calls = s.exec(select(ProviderCall).where(ProviderCall.run_id == run_id)).all()
    assert [(c.operation, c.outcome) for c in calls] == [("generate", "cancelled")]
