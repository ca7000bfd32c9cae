"""The review desk through AppTest (no browser), over a real database seeded by the offline stack.

What the Gallery and Review pages do with the URL, the buttons (the same actions the keys send),
several reviewers, bulk actions and undo. The keys themselves, the loupe and compare are driven
in Chromium by tests/test_review_browser.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import streamlit as st
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline.store.db import open_database, session
from pipeline.store.models import Rating, ReviewEvent
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set

AppFactory = Callable[..., AppTest]


@pytest.fixture
def app() -> Iterator[AppFactory]:
    """A fresh AppTest per call (one browser session); process-wide singletons are released after the test."""
    st.cache_resource.clear()

    def make(to: str = "gallery", reviewer: str = "", **params: str) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        if reviewer:
            at.session_state["reviewer"] = reviewer
        at.run()  # "/" opens Runs
        at.query_params.clear()
        at.query_params.update(params)  # then the link: /gallery?... or /review?...
        at.switch_page(f"pages/{to}.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield make
    st.cache_resource.clear()


@pytest.fixture
def seeded(tmp_path: Path) -> Path:
    """Run 1: 13 prompts × 2 iterations; run 2: 2 prompts × 1 (28 images: two grid pages of 24)."""
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(13)), "--iterations", "2").code == 0
    assert run_cli("run", write_prompt_set(tmp_path / "b.json", make_prompts(2)), "--iterations", "1").code == 0
    return tmp_path


def db():  # type: ignore[no-untyped-def]
    from pipeline.config import Settings

    return open_database(Settings.from_env())


def component(at: AppTest, name: str) -> dict[str, Any]:
    """The data a custom component was drawn with (what the browser receives)."""
    found = [e for e in at.get("bidi_component") if e.proto.component_name == name]
    assert found, f"no {name} on the page"
    return json.loads(found[-1].proto.json)


def grid(at: AppTest) -> dict[str, Any]:
    return component(at, "darkroom_card_grid")


def desk(at: AppTest) -> dict[str, Any]:
    return component(at, "darkroom_review_desk")


def html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def button(at: AppTest, key_or_label: str):  # type: ignore[no-untyped-def]
    return next(b for b in at.button if b.key == key_or_label or b.label == key_or_label)


def stars_widget(at: AppTest, iteration_id: int):  # type: ignore[no-untyped-def]
    """The focused iteration's stars (its key names the value it shows)."""
    return next(f for f in at.feedback if f.key.startswith(f"dr_stars_{iteration_id}_"))


def note_widget(at: AppTest, iteration_id: int):  # type: ignore[no-untyped-def]
    return next(t for t in at.text_input if t.key.startswith(f"dr_note_{iteration_id}_"))


def ratings() -> list[Rating]:
    with session(db()) as s:
        return list(s.exec(select(Rating).order_by(Rating.reviewer, Rating.iteration_id)))


def said(rows: list[Rating]) -> list[tuple[str, int, int | None, str]]:
    """(reviewer, iteration, stars, decision) of the rows that say something."""
    return [(r.reviewer, r.iteration_id, r.stars, r.decision) for r in rows if r.stars is not None or r.decision != "none"]


# ---- the view lives in the URL ---------------------------------------------------------------------
def test_a_pasted_link_restores_filter_sort_size_and_page_in_the_widgets_and_the_grid(app: AppFactory, seeded: Path) -> None:
    at = app(run="1", sort="score", dir="asc", size="l", per="24", page="2")
    assert at.session_state["g_runs"] == [1] and at.session_state["g_sort"] == "score:asc" and at.session_state["g_size"] == "l"
    data = grid(at)
    assert data["size"] == 240
    assert len(data["cards"]) == 2  # 26 images of run 1, 24 per page: page 2 holds the last two
    assert "26 images · page 2 of 2" in html(at)
    everything = app(run="1", sort="score", dir="asc", per="48")
    scores = [c["score"] for c in grid(everything)["cards"]]
    assert scores == sorted(scores) and [c["score"] for c in data["cards"]] == scores[-2:]


def test_changing_a_filter_writes_the_url_and_goes_back_to_page_1(app: AppFactory, seeded: Path) -> None:
    at = app(per="24", page="2")
    at.toggle(key="g_best").set_value(True).run()
    assert at.query_params["best"] == "1" and "page" not in at.query_params
    assert "15 images · page 1 of 1" in html(at)  # each prompt's best iteration: 13 + 2
    at.selectbox(key="g_sort").set_value("prompt:asc").run()
    assert at.query_params["sort"] == "prompt"
    assert [c["title"] for c in grid(at)["cards"]][:3] == ["p000", "p000", "p001"]


def test_garbage_in_the_url_falls_back_to_the_default_view_without_an_error(app: AppFactory, seeded: Path) -> None:
    at = app(page="x", sort="nope", size="huge", run="1,abc", per="9999999999999999999999")
    assert not at.exception
    assert at.session_state["g_runs"] == [1] and at.session_state["g_sort"] == "newest:desc"
    gone = app("review", item="999999", mode="review")
    assert "This link does not open a prompt." in [e.value for e in gone.error]
    button(gone, "Back to the grid").click().run()
    assert not gone.exception and "item" not in gone.query_params


# ---- Review: one prompt at a time -------------------------------------------------------------------
def test_review_walks_the_selection_in_its_sort_and_says_n_of_n(app: AppFactory, seeded: Path) -> None:
    at = app("review", reviewer="ana", run="1", sort="prompt", item="1", mode="review")
    assert "1 of 13 in this selection" in html(at)
    data = desk(at)
    assert [it["number"] for it in data["iterations"]] == [1, 2] and data["focus"] == 1
    assert all(it["url"] for it in data["iterations"])  # the full-size images, not the thumbnails
    assert data["prefetch"]  # the next prompt's images, loaded before → is pressed
    button(at, "dr_next").click().run()
    assert "2 of 13 in this selection" in html(at) and at.query_params["item"] == "2"
    button(at, "dr_prev").click().run()
    assert "1 of 13" in html(at) and button(at, "dr_prev").disabled


def test_leaving_review_returns_to_the_same_grid_page_with_the_same_filters(app: AppFactory, seeded: Path) -> None:
    at = app(reviewer="ana", per="24", page="2", sort="score")
    first = grid(at)["cards"][0]
    at.query_params.update({"item": str(first["item"]), "mode": "review", "it": str(first["number"])})
    at.switch_page("pages/review.py").run()
    assert desk(at)["focus"] == first["number"]
    for _ in range(3):
        button(at, "dr_next").click().run()
    button(at, "Grid").click().run()
    assert not at.exception
    assert {k: v for k, v in at.query_params.items()} == {"per": "24", "page": "2", "sort": "score"}
    assert "page 2 of 2" in html(at) and grid(at)["cards"][0]["id"] == first["id"]


def test_stars_decision_note_and_undo_from_the_review_controls_go_through_the_event_log(app: AppFactory, seeded: Path) -> None:
    at = app("review", reviewer="ana", item="1", mode="review")
    focus = desk(at)["iterations"][0]["id"]
    stars_widget(at, focus).set_value(3).run()  # the fourth star (0-based)
    button(at, "dr_approve").click().run()
    note_widget(at, focus).set_value("keep").run()
    assert not at.exception
    assert said(ratings()) == [("ana", focus, 4, "approved")]
    [it] = [i for i in desk(at)["iterations"] if i["id"] == focus]
    assert (it["mine_stars"], it["mine_decision"], it["in_force"]) == (4, "approved", "approved")
    assert [h.split(" · ")[1] for h in it["details"]["history"]] == ["note", "approve", "star"]  # newest first
    button(at, "dr_undo").click().run()  # the note goes first, then the approval
    button(at, "dr_undo").click().run()
    assert said(ratings()) == [("ana", focus, 4, "none")]
    with session(db()) as s:
        events = s.exec(select(ReviewEvent).order_by(ReviewEvent.id)).all()
    assert [e.action for e in events] == ["star", "approve", "note", "undo", "undo"]


def test_auto_advance_moves_to_the_next_prompt_after_a_decision(app: AppFactory, seeded: Path) -> None:
    at = app("review", reviewer="ana", run="1", sort="prompt", item="1", mode="review")
    at.toggle(key="dr_auto_0").set_value(True).run()
    button(at, "dr_reject").click().run()
    assert at.query_params["item"] == "2" and "2 of 13" in html(at)
    assert said(ratings())[0][3] == "rejected"


def test_focus_and_compare_live_in_the_url(app: AppFactory, seeded: Path) -> None:
    at = app("review", reviewer="ana", item="1", it="2", mode="review")
    data = desk(at)
    assert data["focus"] == 2
    ids = [it["id"] for it in data["iterations"]]
    cmp = app("review", reviewer="ana", item="1", mode="compare", cmp=f"{ids[0]},{ids[1]}")
    pair = desk(cmp)["compare"]["pair"]
    assert [p["id"] for p in pair] == ids and all(p["url"] for p in pair)


def test_compare_offers_the_same_prompt_from_other_runs_and_shows_any_pair(app: AppFactory, seeded: Path) -> None:
    """Run 2 made the first two prompts of run 1 again: Review of run 1's first prompt can compare across runs."""
    at = app("review", reviewer="ana", item="1", mode="review")
    data = desk(at)
    own = [it["id"] for it in data["iterations"]]
    labels = {c["id"]: c["label"] for c in data["candidates"]}
    elsewhere = [i for i, label in labels.items() if label.startswith("Run 2 ")]
    assert len(elsewhere) == 1 and set(own) <= set(labels)  # run 2 made one iteration of it
    assert not any(label.startswith("Run 2 ") for i, label in labels.items() if i in own)
    assert all("url" not in c for c in data["candidates"])  # files are registered only for the pair on screen
    cmp = app("review", reviewer="ana", item="1", mode="compare", cmp=f"{own[-1]},{elsewhere[0]}")
    pair = desk(cmp)["compare"]["pair"]
    assert [p["id"] for p in pair] == [own[-1], elsewhere[0]] and all(p["url"] for p in pair)
    assert pair[1]["label"].startswith("Run 2 · iteration 1 · offline")
    unrelated = app("review", reviewer="ana", item="5", mode="review")  # prompt 5 was made by run 1 only
    assert not any(c["label"].startswith("Run 2 ") for c in desk(unrelated)["candidates"])


def test_rating_needs_a_name_and_says_so(app: AppFactory, seeded: Path) -> None:
    at = app("review", item="1", mode="review")
    assert any("Enter your name" in w.value for w in at.warning)
    assert all(button(at, k).disabled for k in ("dr_approve", "dr_reject", "dr_undo"))
    assert desk(at)["enabled"] is False


# ---- several reviewers ---------------------------------------------------------------------------------
def test_two_reviewers_keep_their_own_ratings_and_each_sees_the_other_by_name(app: AppFactory, seeded: Path) -> None:
    ana = app("review", reviewer="ana", item="1", mode="review")
    focus = desk(ana)["iterations"][0]["id"]
    stars_widget(ana, focus).set_value(4).run()
    button(ana, "dr_approve").click().run()
    bo = app("review", reviewer="bo", item="1", mode="review")
    stars_widget(bo, focus).set_value(1).run()
    button(bo, "dr_reject").click().run()
    assert said(ratings()) == [("ana", focus, 5, "approved"), ("bo", focus, 2, "rejected")]

    ana.run()
    [it] = [i for i in desk(ana)["iterations"] if i["id"] == focus]
    assert (it["mine_stars"], it["mine_decision"]) == (5, "approved")
    assert [o[:3] for o in it["others"]] == [["bo", 2, "rejected"]]
    assert (it["mean"], it["count"]) == (3.5, 2)
    assert it["in_force"] == "rejected" and "latest" in it["in_force_label"]  # the [review] rule: the latest decision
    card = next(c for c in grid(app(reviewer="ana"))["cards"] if c["id"] == focus)
    assert card["disputed"] and card["my_stars"] == 5 and "bo: ★★☆☆☆ rejected" in card["others_text"]
    disputed = app(reviewer="ana", disputed="1")
    assert [c["id"] for c in grid(disputed)["cards"]] == [focus]
    todo = app(reviewer="bo", todo="1")
    assert focus not in [c["id"] for c in grid(todo)["cards"]] and len(grid(todo)["cards"]) == 27


# ---- bulk actions and selection --------------------------------------------------------------------------
def test_bulk_on_the_filter_names_count_and_scope_first_and_one_undo_reverses_it(app: AppFactory, seeded: Path) -> None:
    bo = app("review", reviewer="bo", item="1", mode="review")
    kept = desk(bo)["iterations"][0]["id"]
    button(bo, "dr_reject").click().run()

    at = app(reviewer="ana", run="2")
    at.radio(key="g_bulk_scope").set_value("filter").run()
    at.selectbox(key="g_bulk_action").set_value("approve").run()
    button(at, "Review and apply…").click().run()
    assert not at.exception
    shown = [t.value for t in at.text]
    assert "all 2 images matching: run 2" in shown and "ana" in shown
    assert said(ratings()) == [("bo", kept, None, "rejected")]  # nothing written before the confirmation
    button(at, "Apply to 2 images").click().run()
    approved = [r for r in said(ratings()) if r[0] == "ana"]
    assert len(approved) == 2 and {r[3] for r in approved} == {"approved"}
    assert any("2 of 2 images changed" in t.value for t in at.toast)
    button(at, "g_undo").click().run()
    assert said(ratings()) == [("bo", kept, None, "rejected")]  # one undo: the whole batch, and only ana's


def test_bulk_on_the_selected_cards_acts_on_exactly_those(app: AppFactory, seeded: Path) -> None:
    at = app(reviewer="ana")
    chosen = [c["id"] for c in grid(at)["cards"][:3]]
    at.session_state["gallery_grid"] = {"selected": chosen}  # what the browser reports after clicks / Shift-click
    at.run()
    assert at.radio(key="g_bulk_scope").options[0] == "The selected cards (3)"
    at.selectbox(key="g_bulk_action").set_value("star:4").run()
    button(at, "Review and apply…").click().run()
    assert "3 selected images" in [t.value for t in at.text]
    button(at, "Apply to 3 images").click().run()
    assert sorted(r[1] for r in said(ratings())) == sorted(chosen) and {r[2] for r in said(ratings())} == {4}
    assert [c["my_stars"] for c in grid(at)["cards"][:3]] == [4, 4, 4]


def test_the_export_button_offers_this_selection_and_is_off_when_it_is_empty(app: AppFactory, seeded: Path) -> None:
    at = app(run="2")
    [export] = [b for b in at.get("download_button") if b.proto.label == "Export"]
    assert not export.proto.disabled and "2 images" in export.proto.help
    none = app(run="2", q="no such words at all")
    [empty] = [b for b in none.get("download_button") if b.proto.label == "Export"]
    assert empty.proto.disabled


# ---- the action queue behind the keys ----------------------------------------------------------------------
def test_the_key_queue_applies_each_action_once_and_in_order() -> None:
    def script() -> None:
        import streamlit as st

        from pages.components import applied, new_actions, session_id

        st.session_state.setdefault("log", [])
        actions = new_actions("desk")
        st.session_state["log"].append([a["a"] for a in actions])
        if st.session_state.get("commit", True):
            applied("desk", actions, session_id())

    at = AppTest.from_function(script)
    at.session_state["desk"] = {"actions": [{"a": "next", "seq": 2}, {"a": "stars", "v": 5, "seq": 1}]}
    at.run()
    at.session_state["desk"] = {"actions": [{"a": "stars", "seq": 1}, {"a": "next", "seq": 2}, {"a": "approve", "seq": 3}, "junk"]}
    at.session_state["commit"] = False  # a run stopped before its commit: the actions come again
    at.run()
    at.session_state["commit"] = True
    at.run()
    at.run()
    assert at.session_state["log"] == [["stars", "next"], ["approve"], ["approve"], []]


# ---- the session's action lock (fast reruns overlap two runs of one session) ---------------------------------
def test_two_runs_of_one_session_apply_actions_one_after_the_other_and_other_sessions_never_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import pages.components as components

    current = threading.local()
    monkeypatch.setattr(components, "session_id", lambda: current.sid)
    order: list[str] = []
    older_inside, release_older = threading.Event(), threading.Event()

    def run(sid: str, name: str, hold: threading.Event | None = None) -> None:
        current.sid = sid
        with components.exclusive() as got:
            assert got
            order.append(f"{name} in")
            if hold is not None:
                older_inside.set()
                hold.wait(5)
            with components.exclusive() as again:  # re-entrant: apply_pending -> apply
                assert again
            order.append(f"{name} out")

    older = threading.Thread(target=run, args=("s1", "older", release_older))
    older.start()
    assert older_inside.wait(5)
    newer = threading.Thread(target=run, args=("s1", "newer"))
    newer.start()
    other = threading.Thread(target=run, args=("s2", "other"))
    other.start()
    other.join(5)
    time.sleep(0.2)
    assert order == ["older in", "other in", "other out"]  # the newer run of s1 waits; s2 does not
    release_older.set()
    older.join(5)
    newer.join(5)
    assert order[3:] == ["older out", "newer in", "newer out"]


def test_forgetting_old_sessions_never_drops_a_lock_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import pages.components as components

    monkeypatch.setattr(components, "_MAX_SESSIONS", 3)
    monkeypatch.setattr(components, "_LOCKS", {})
    monkeypatch.setattr(components, "_LOCK_USERS", {})
    monkeypatch.setattr(components, "session_id", lambda: "busy")
    with components.exclusive() as got:
        held = components._LOCKS["busy"]
        for n in range(5):  # many sessions come and go while "busy" holds its lock
            monkeypatch.setattr(components, "session_id", lambda n=n: f"gone-{n}")
            with components.exclusive():
                pass
        assert got and components._LOCKS["busy"] is held
        assert len(components._LOCKS) <= 4
    assert components._LOCK_USERS["busy"] == 0
