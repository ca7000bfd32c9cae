"""The review desk's pipeline side: events and undo, several reviewers, decision rules, the grid's
filters, sorts and Review's prev/next, the view in the URL, bulk actions and exporting a selection."""

from __future__ import annotations

import csv
import io
import json
import random
import threading
import zipfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import ConfigError, ExportError, InputError
from pipeline.review.decisions import InForce, Vote, decide, review_config
from pipeline.review.events import act, history, last_undoable, undo_last
from pipeline.review.export import build_selection_zip, build_zip, manifest_rows_for_selection
from pipeline.review.gallery import GalleryFilter, Sort, gallery_page, review_position, selection_iteration_ids
from pipeline.review.ratings import bulk_apply, bulk_scope, rate, summaries, validate_reviewer
from pipeline.review.view import MAX_ROW_ID, ViewState, decode, encode
from pipeline.store.db import create_db_engine, open_database, session
from pipeline.store.migrations import migrate
from pipeline.store.models import Evaluation, Iteration, Prompt, PromptSet, Rating, ReviewEvent, Run, RunItem, Thumbnail, utcnow

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32 + b"\xff\xd9"


@dataclass
class Desk:
    """A seeded gallery: run 1 has 6 prompts x 2 iterations, run 2 has 3 prompts x 1 iteration."""

    items: dict[tuple[int, str], int]  # (run id, prompt key) -> run_item id
    images: dict[tuple[int, str, int], int]  # (run id, prompt key, iteration) -> iteration id
    scores: dict[int, float]  # iteration id -> judge score

    def it(self, run: int, key: str, number: int = 1) -> int:
        return self.images[(run, key, number)]


def seed(s, settings: Settings, runs: dict[int, tuple[int, int]], *, files: bool = True) -> Desk:  # type: ignore[no-untyped-def]
    """Runs of ``prompts x iterations`` images, scored so that every sort has a clear order."""
    ps = PromptSet(name="desk", sha256="x", prompt_count=9)
    s.add(ps)
    s.flush()
    prompts = []
    for i in range(max(p for p, _ in runs.values())):
        prompt = Prompt(prompt_set_id=ps.id, position=i, key=f"p{i:02d}", title=f"Lantern {i}", prompt=f"A lantern number {i}")
        s.add(prompt)
        prompts.append(prompt)
    s.flush()
    desk = Desk({}, {}, {})
    rng = random.Random(7)
    for run_id, (n_prompts, n_iterations) in sorted(runs.items()):
        run = Run(id=run_id, prompt_set_id=ps.id, name=f"run {run_id}", status="completed", output_dir=f"runs/{run_id}")
        s.add(run)
        s.flush()
        for prompt in prompts[:n_prompts]:
            scores = [round(rng.uniform(2, 9.5), 2) for _ in range(n_iterations)]
            best = max(range(n_iterations), key=scores.__getitem__) + 1
            item = RunItem(run_id=run_id, prompt_id=prompt.id, status="completed", final_iteration=best, best_score=max(scores))
            s.add(item)
            s.flush()
            desk.items[(run_id, prompt.key)] = item.id
            for n, score in enumerate(scores, 1):
                path = f"results/{prompt.key}/iteration_{n}.jpg"
                it = Iteration(run_item_id=item.id, number=n, prompt_text=f"{prompt.prompt}, take {n}", provider="offline",
                               model="m", status="ok", image_path=path, mime_type="image/jpeg", sha256="h")
                s.add(it)
                s.flush()
                s.add(Evaluation(iteration_id=it.id, judge="offline", overall_score=score))
                s.add(Thumbnail(iteration_id=it.id, mime_type="image/jpeg", width=8, height=8, data=JPEG))
                desk.images[(run_id, prompt.key, n)] = it.id
                desk.scores[it.id] = score
                if files:
                    target = settings.data_dir / "runs" / str(run_id) / path
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(JPEG)
    s.commit()
    return desk


@pytest.fixture
def desk(engine, settings: Settings) -> Desk:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        return seed(s, settings, {1: (6, 2), 2: (3, 1)})


def ids(page) -> list[int]:  # type: ignore[no-untyped-def]
    return [c.iteration_id for c in page.cards]


# ---- decision rules ------------------------------------------------------------------------------
def test_decision_rules_latest_majority_unanimous_and_their_ties() -> None:
    t0 = utcnow()
    ana_up, bo_down, cy_up = Vote("ana", "approved", t0), Vote("bo", "rejected", t0 + timedelta(seconds=1)), Vote("cy", "approved", t0)
    assert decide([ana_up, bo_down], "latest") == InForce("rejected", "latest", False, 1, 1)  # bo decided last
    assert decide([ana_up, bo_down], "majority") == InForce("none", "majority", True, 1, 1)  # 1–1: a tie-break
    assert decide([ana_up, bo_down, cy_up], "majority").decision == "approved"
    assert decide([ana_up, bo_down, cy_up], "unanimous") == InForce("none", "unanimous", True, 2, 1)
    assert decide([ana_up, cy_up], "unanimous") == InForce("approved", "unanimous", False, 2, 0)
    assert decide([ana_up, Vote("bo", "none")], "unanimous").decision == "approved"  # no decision is no vote
    assert decide([], "majority") == InForce("none", "majority", False, 0, 0)
    assert decide([ana_up, bo_down], "majority").label == "needs a tie-break (1–1, majority)"
    assert decide([ana_up, bo_down, cy_up], "majority").label == "approved (majority 2–1)"
    with pytest.raises(ConfigError, match="not one of latest, majority, unanimous"):
        decide([ana_up], "loudest")


@pytest.mark.parametrize("rule", ["latest", "majority", "unanimous"])
def test_the_grid_and_the_per_image_summary_apply_the_same_rule(engine, desk: Desk, rule: str) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(rule)
    images = list(desk.images.values())
    with session(engine) as s:
        for _ in range(80):
            who, image = rng.choice(["ana", "bo", "cy", "dee"]), rng.choice(images)
            action = rng.choice(["approve", "reject", "clear_decision", "star"])
            act(s, who, [image], action, rng.randint(1, 5) if action == "star" else None)
            s.commit()
        page = gallery_page(s, GalleryFilter(), 1, 100, rule=rule)
        summary = summaries(s, images, "ana", rule)
    assert page.total == len(images)
    for card in page.cards:
        in_force = summary[card.iteration_id].in_force
        assert (card.decision, card.needs_tiebreak, card.approvals, card.rejections) == (
            in_force.decision, in_force.needs_tiebreak, in_force.approvals, in_force.rejections), card.iteration_id


def test_review_config_is_read_from_the_review_table_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert review_config(Settings.from_env()).decision_rule == "latest"  # the shipped default
    override = tmp_path / "review.toml"
    override.write_text('[review]\ndecision_rule = "majority"\n')
    monkeypatch.setenv("DARKROOM_CONFIG", str(override))
    assert review_config(Settings.from_env()).decision_rule == "majority"
    override.write_text('[review]\ndecision_rule = "loudest"\n')
    with pytest.raises(ConfigError, match=r"\[review\] decision_rule = 'loudest' is not one of latest, majority, unanimous"):
        review_config(Settings.from_env())


# ---- events, undo, history -----------------------------------------------------------------------
def test_every_action_is_an_event_with_who_what_when_and_before_after(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    image = desk.it(1, "p00")
    with session(engine) as s:
        for action, value in [("star", 4), ("star", 5), ("approve", None), ("note", "=crop the left edge"), ("clear_stars", None),
                              ("clear_decision", None)]:
            act(s, "ana", [image], action, value)
            s.commit()
        assert act(s, "ana", [image], "clear_decision").changed == 0  # already cleared: no event, nothing to undo
        s.commit()
        lines = [h.text for h in history(s, image)]
    assert lines == [
        "ana · clear decision · approved → none",
        "ana · clear stars · 5★ → no stars",
        "ana · note · no note → “=crop the left edge”",
        "ana · approve · none → approved",
        "ana · star · 4★ → 5★",
        "ana · star · no stars → 4★",
    ]


def test_undo_reverses_this_reviewers_last_action_then_the_one_before(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    image = desk.it(1, "p01")
    with session(engine) as s:
        act(s, "ana", [image], "star", 3)
        act(s, "ana", [image], "approve")
        act(s, "bo", [image], "reject")  # bo's action is not ana's to undo
        s.commit()
        assert last_undoable(s, "ana").label == "approve of 1 image"
        assert undo_last(s, "ana").changed == 1
        s.commit()
        mine = summaries(s, [image], "ana")[image]
        assert (mine.mine.stars, mine.mine.decision) == (3, "none")
        assert [(o.reviewer, o.decision) for o in mine.others] == [("bo", "rejected")]
        undo_last(s, "ana")
        s.commit()
        assert summaries(s, [image], "ana")[image].mine is None  # back to nothing: not listed as a rating
        assert undo_last(s, "ana") is None  # nothing left
        assert [h.text for h in history(s, image)][:2] == ["ana · undo stars · 3★ → no stars", "ana · undo decision · approved → none"]


def test_one_undo_reverses_a_whole_bulk_action_and_nothing_of_another_reviewer(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    run1 = [i for (run, _, _), i in desk.images.items() if run == 1]
    with session(engine) as s:
        act(s, "ana", [run1[0]], "reject")
        act(s, "bo", run1[:3], "star", 2)
        s.commit()
        scope = bulk_scope(s, filter=GalleryFilter(run_ids=(1,)))
        assert (scope.count, scope.description) == (12, "all 12 images matching: run 1")
        outcome = bulk_apply(s, "ana", scope, "approve")
        s.commit()
        assert outcome.changed == 12
        assert last_undoable(s, "ana").scope == "all 12 images matching: run 1"
        assert gallery_page(s, GalleryFilter(decisions=("approved",))).total == 12
        undo_last(s, "ana")
        s.commit()
        cards = {c.iteration_id: c for c in gallery_page(s, GalleryFilter(run_ids=(1,)), 1, 100).cards}
    assert cards[run1[0]].decision == "rejected"  # ana's earlier reject is back
    assert all(cards[i].decision == "none" for i in run1[1:])
    assert [cards[i].stars for i in run1[:3]] == [2, 2, 2]  # bo's stars untouched throughout


def test_undo_brings_back_a_decision_with_the_time_it_was_made(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    image = desk.it(1, "p02")
    with session(engine) as s:
        act(s, "ana", [image], "approve")
        s.commit()
        act(s, "bo", [image], "reject")  # latest: rejected
        s.commit()
        act(s, "ana", [image], "clear_decision")
        s.commit()
        undo_last(s, "ana")  # ana's approval is back, still older than bo's rejection
        s.commit()
        assert gallery_page(s, GalleryFilter(run_ids=(1,), text="number 2, take 1")).cards[0].decision == "rejected"


def test_bad_actions_are_refused_with_a_clear_message(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    image = desk.it(1, "p00")
    with session(engine) as s:
        with pytest.raises(InputError, match="stars: 6 is not a whole number from 1 to 5"):
            act(s, "ana", [image], "star", 6)
        with pytest.raises(InputError, match="action 'maybe' is not one of star, clear_stars"):
            act(s, "ana", [image], "maybe")
        with pytest.raises(InputError, match="image 999999 does not exist"):
            act(s, "ana", [999999], "approve")
        with pytest.raises(InputError, match="choose at least one image"):
            act(s, "ana", [], "approve")
        with pytest.raises(InputError, match="note: 4,001 characters is over the limit of 4,000"):
            act(s, "ana", [image], "note", "x" * 4001)
        assert s.exec(select(ReviewEvent)).all() == []


def test_reviewer_names_are_checked() -> None:
    assert validate_reviewer("  Ana  ") == "Ana"
    assert validate_reviewer("@ana") == "@ana"  # kept as typed; the CSV neutralises it
    for bad, message in [("", "give a name"), ("   ", "give a name"), ("x" * 65, "65 characters is over the limit of 64"),
                         ("ana\nbo", "control character"), ("ana\u202ebo", "control character")]:
        with pytest.raises(InputError, match=message):
            validate_reviewer(bad)


# ---- several reviewers --------------------------------------------------------------------------
def test_one_reviewers_bulk_approve_never_blanks_anothers_stars(engine, settings: Settings, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    """The reported bug: bo's bulk approve hid ana's 5 stars in the grid and in manifest.csv."""
    image = desk.it(1, "p03")
    with session(engine) as s:
        rate(s, image, "ana", stars=5, note="hero shot")
        s.commit()
        bulk_apply(s, "bo", bulk_scope(s, filter=GalleryFilter(run_ids=(1,))), "approve")
        s.commit()
        card = next(c for c in gallery_page(s, GalleryFilter(run_ids=(1,)), 1, 100).cards if c.iteration_id == image)
        summary = summaries(s, [image], "bo")[image]
        rows = {r["file"]: r for r in manifest_rows_for_selection(s, settings, GalleryFilter(run_ids=(1,)))}
    assert (card.stars, card.mean_stars, card.star_count, card.decision) == (5, 5.0, 1, "approved")
    assert [(o.reviewer, o.stars, o.note) for o in summary.others] == [("ana", 5, "hero shot")]
    assert (summary.mine.decision, summary.mean_stars, summary.in_force.decision) == ("approved", 5.0, "approved")
    row = rows["p03/iteration_1.jpg"]
    assert row["stars"] == 5 and row["ratings"]["ana"]["stars"] == 5 and row["ratings"]["bo"]["decision"] == "approved"


def test_two_reviewers_rating_the_same_20_images_at_once_keep_all_40_ratings(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        desk = seed(s, settings, {1: (10, 2)}, files=False)
    images = sorted(desk.images.values())
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def review(name: str, stars: int, decision: str) -> None:
        try:
            barrier.wait()
            for image in images:
                with session(engine) as s:
                    act(s, name, [image], "star", stars)
                    act(s, name, [image], decision)
                    s.commit()
            with session(engine) as s:  # and then a bulk action over all of them
                bulk_apply(s, name, bulk_scope(s, iteration_ids=images), "note", f"{name} was here")
                s.commit()
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=review, args=a) for a in (("ana", 5, "approve"), ("bo", 2, "reject"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session(engine) as s:
        rows = s.exec(select(Rating)).all()
        cards = gallery_page(s, GalleryFilter(), 1, 100, rule="majority").cards
    assert len(rows) == 40
    assert {(r.reviewer, r.stars, r.decision, r.note) for r in rows} == {
        ("ana", 5, "approved", "ana was here"), ("bo", 2, "rejected", "bo was here")}
    assert all((c.mean_stars, c.star_count, c.needs_tiebreak, c.disputed) == (3.5, 2, True, True) for c in cards)


# ---- the grid: filters, sorts, pages, prev/next -------------------------------------------------
def test_filters_not_yet_reviewed_by_me_disputed_and_approved_by_n(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    a, b, c, d = desk.it(1, "p00"), desk.it(1, "p01"), desk.it(1, "p02"), desk.it(1, "p03")
    with session(engine) as s:
        act(s, "ana", [a, b, c], "approve")
        act(s, "bo", [a, b], "approve")
        act(s, "bo", [c], "reject")
        act(s, "cy", [a], "approve")
        act(s, "ana", [d], "star", 1)
        act(s, "bo", [d], "star", 5)  # stars 4 apart: disputed too
        act(s, "cy", [b], "note", "just a comment")  # a note alone is not a review
        s.commit()
        total = len(desk.images)
        todo_ana = gallery_page(s, GalleryFilter(unreviewed=True), 1, 100, reviewer="ana")
        assert todo_ana.total == total - 4 and not {a, b, c, d} & set(ids(todo_ana))
        assert gallery_page(s, GalleryFilter(unreviewed=True), 1, 100, reviewer="cy").total == total - 1
        assert sorted(ids(gallery_page(s, GalleryFilter(disputed=True), 1, 100))) == sorted([c, d])
        assert ids(gallery_page(s, GalleryFilter(disputed=True), 1, 100, disputed_star_spread=0)) == [c]
        assert sorted(ids(gallery_page(s, GalleryFilter(approved_by=2), 1, 100))) == sorted([a, b])
        assert ids(gallery_page(s, GalleryFilter(approved_by=3), 1, 100)) == [a]
        # cards carry my rating next to everyone's
        card = next(x for x in gallery_page(s, GalleryFilter(), 1, 100, reviewer="ana").cards if x.iteration_id == d)
        assert (card.my_stars, card.mean_stars, card.star_count, card.disputed) == (1, 3.0, 2, True)


def test_sorts_by_score_stars_newest_prompt_id_and_score_change(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        act(s, "ana", [desk.it(2, "p01")], "star", 5)
        act(s, "ana", [desk.it(1, "p04", 2)], "star", 2)
        s.commit()

        def order(key: str, descending: bool) -> list[int]:
            return ids(gallery_page(s, GalleryFilter(), 1, 100, sort=Sort(key, descending)))

        by_score = order("score", True)
        assert [desk.scores[i] for i in by_score] == sorted(desk.scores.values(), reverse=True)
        assert [desk.scores[i] for i in order("score", False)] == sorted(desk.scores.values())
        assert order("stars", True)[:2] == [desk.it(2, "p01"), desk.it(1, "p04", 2)]
        assert order("stars", False)[:2] == [desk.it(1, "p04", 2), desk.it(2, "p01")]  # unstarred last either way
        newest = order("newest", True)
        assert newest[:3] == [desk.it(2, "p00"), desk.it(2, "p01"), desk.it(2, "p02")] and newest[3] == desk.it(1, "p00")
        assert order("prompt", True)[0] in (desk.it(1, "p05"), desk.it(1, "p05", 2))
        deltas = {desk.it(1, k, 2): desk.scores[desk.it(1, k, 2)] - desk.scores[desk.it(1, k)] for k in ("p00", "p01", "p02", "p03", "p04", "p05")}
        assert order("delta", True)[:6] == sorted(deltas, key=deltas.get, reverse=True)
        with pytest.raises(InputError, match="sort 'size' is not one of newest, score"):
            order("size", True)


def test_pages_and_review_prev_next_follow_the_selection_and_its_sort(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    f, sort = GalleryFilter(run_ids=(1,)), Sort("score", True)
    with session(engine) as s:
        pages = [gallery_page(s, f, n, 5, sort=sort) for n in (1, 2, 3, 9)]
        assert [len(p.cards) for p in pages] == [5, 5, 2, 2] and pages[3].page == 3  # clamped to the last page
        grid = [c for p in pages[:3] for c in p.cards]
        prompts = list(dict.fromkeys(c.run_item_id for c in grid))  # prompts in order of first appearance
        assert len(prompts) == 6
        middle = review_position(s, f, prompts[2], sort=sort)
        assert (middle.index, middle.total, middle.prev_item, middle.next_item) == (3, 6, prompts[1], prompts[3])
        first, last = review_position(s, f, prompts[0], sort=sort), review_position(s, f, prompts[-1], sort=sort)
        assert (first.prev_item, first.next_item, last.next_item, last.index) == (None, prompts[1], None, 6)
        # reviewed under "not yet reviewed by me": the prompt leaves the selection but → still goes on from it
        todo = GalleryFilter(run_ids=(1,), unreviewed=True)
        for it in s.exec(select(Iteration.id).where(Iteration.run_item_id == prompts[2])):
            act(s, "ana", [it], "approve")
        s.commit()
        gone = review_position(s, todo, prompts[2], sort=sort, reviewer="ana")
        assert (gone.index, gone.total, gone.prev_item, gone.next_item) == (None, 5, prompts[1], prompts[3])
        for missing in (None, 10**30, -1, 987654):
            nowhere = review_position(s, f, missing, sort=sort)
            assert (nowhere.index, nowhere.prev_item, nowhere.next_item, nowhere.first_item) == (None, None, prompts[0], prompts[0])


def test_selection_ids_follow_the_grid_and_bulk_needs_an_explicit_scope(engine, desk: Desk) -> None:  # type: ignore[no-untyped-def]
    f, sort = GalleryFilter(best_only=True, score_min=5), Sort("score", True)
    with session(engine) as s:
        grid = ids(gallery_page(s, f, 1, 100, sort=sort))
        assert selection_iteration_ids(s, f, sort=sort) == grid
        with pytest.raises(InputError, match="never applies to every run silently"):
            bulk_scope(s)
        picked = bulk_scope(s, iteration_ids=grid[:2] + grid[:1])
        assert (picked.count, picked.description) == (2, "2 selected images")
        everything = bulk_scope(s, filter=GalleryFilter())
        assert everything.description == f"all {len(desk.images)} images matching: every run"


# ---- the view in the URL -------------------------------------------------------------------------
def test_the_view_round_trips_through_query_params_as_strings() -> None:
    view = ViewState(
        filter=GalleryFilter(run_ids=(3, 4), statuses=("completed",), score_min=6.5, score_max=9.25, stars=(0, 5),
                             decisions=("approved", "none"), providers=("fal", "a,b%c"), tags=("night sky",), text="red fox, dusk",
                             best_only=True, unreviewed=True, disputed=True, approved_by=2),
        sort=Sort("prompt", True), page=3, per_page=96, thumb="l", item=123, focus=2, mode="review", compare=(12, 57))
    params = encode(view)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in params.items())
    assert params["prov"] == "fal,a%2Cb%25c" and params["dir"] == "desc" and params["item"] == "123"
    assert decode(params) == view
    assert encode(ViewState()) == {}  # the default view has a bare URL
    assert decode({}) == ViewState()
    back = view.to_grid()
    assert (back.filter, back.sort, back.page, back.item, back.mode) == (view.filter, view.sort, 3, None, "grid")
    assert view.with_filter(GalleryFilter()).page == 1


@pytest.mark.parametrize("params", [
    {"item": "9" * 400}, {"item": str(MAX_ROW_ID + 1)}, {"item": "-3"}, {"item": "1e9"}, {"item": "²"}, {"item": "١٢"},
    {"item": "abc", "mode": "review"}, {"page": "-1"}, {"page": "9" * 50}, {"page": "NaN"}, {"per": "0"}, {"per": "1e9"},
    {"score": "nan-inf"}, {"score": "9-2"}, {"score": "-5-50"}, {"stars": "7,x,-1"}, {"run": "1,,x,99999999999999999999999"},
    {"sort": "<script>"}, {"dir": "sideways"}, {"mode": "compare"}, {"it": "0"}, {"cmp": "1,2,3,4"}, {"size": "huge"},
    {"q": "\x00\x1b[31m fox"}, {"dec": "maybe"}, {"status": "ok"}, {"appr": "-2"}, {"prov": "%ZZ,%"}, {"item": ["1", "oops"]},
    {"item": None}, {"page": 5}, {"tag": "x" * 10_000},
])
def test_garbage_in_the_url_is_ignored_or_clamped_never_an_exception(params: dict, engine, desk: Desk) -> None:  # type: ignore[no-untyped-def,type-arg]
    view = decode(params)
    assert view.item is None or 1 <= view.item <= MAX_ROW_ID
    assert 1 <= view.page and view.per_page in (24, 48, 96, 200) and view.mode in ("grid", "review", "compare")
    assert decode(encode(view)) == view
    with session(engine) as s:  # and whatever it became, the queries accept it
        page = gallery_page(s, view.filter, view.page, view.per_page, sort=view.sort, reviewer="ana")
        review_position(s, view.filter, view.item, sort=view.sort, reviewer="ana")
    assert page.page <= page.pages


def test_clamping_keeps_what_can_be_kept() -> None:
    view = decode({"page": "9" * 50, "per": "50", "score": "9-2", "stars": "7,5,x,0", "cmp": "1,2,3", "item": "12", "mode": "review"})
    assert (view.page, view.per_page, view.filter.score_min, view.filter.score_max) == (1_000_000, 48, 2.0, 9.0)
    assert (view.filter.stars, view.compare, view.item, view.mode) == ((5, 0), (1, 2), 12, "review")
    assert decode({"mode": "review"}).mode == "grid"  # nothing open: the grid


# ---- export this selection -----------------------------------------------------------------------
def test_export_this_selection_is_exactly_the_grid_with_every_reviewer(engine, settings: Settings, desk: Desk,
                                                                      tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = desk.it(1, "p00"), desk.it(2, "p00")
    with session(engine) as s:
        act(s, "ana", [a, b], "star", 4)
        act(s, "=bo", [a], "approve")
        act(s, "=bo", [a], "note", "+1 for the glow")
        act(s, "ana", [b], "reject")
        s.commit()
        f, sort = GalleryFilter(decisions=("approved", "rejected")), Sort("newest", False)
        grid = ids(gallery_page(s, f, 1, 100, sort=sort))
        result = build_selection_zip(s, settings, f, tmp_path / "sel.zip", reviewer="ana", sort=sort)
        with pytest.raises(ExportError, match="no images match this selection .*; nothing was written"):
            build_selection_zip(s, settings, GalleryFilter(approved_by=9), tmp_path / "none.zip")
    assert result.images == len(grid) == 2 and not (tmp_path / "none.zip").exists()
    with zipfile.ZipFile(tmp_path / "sel.zip") as zf:
        names = [n for n in zf.namelist() if not n.startswith("manifest")]
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        manifest = json.loads(zf.read("manifest.json"))
    assert names == ["run_1/p00/iteration_1.jpg", "run_2/p00/iteration_1.jpg"]  # two runs: a folder each, grid order
    assert manifest["decision_rule"] == "latest" and manifest["filter"] == f.describe()
    first = manifest["images"][0]
    assert (first["decision"], first["reviewer"], first["note"], first["stars"]) == ("approved", "=bo", "+1 for the glow", 4)
    assert first["ratings"] == {"=bo": {"stars": None, "decision": "approved", "note": "+1 for the glow",
                                        "rated_at": first["ratings"]["=bo"]["rated_at"]},
                                "ana": {"stars": 4, "decision": "none", "note": "", "rated_at": first["ratings"]["ana"]["rated_at"]}}
    # CSV: a column per reviewer and part; names and notes starting like a formula are neutralised
    assert list(rows[0])[-6:] == ["'=bo: stars", "'=bo: decision", "'=bo: note", "ana: stars", "ana: decision", "ana: note"]
    assert (rows[0]["reviewer"], rows[0]["'=bo: note"], rows[0]["ana: stars"], rows[0]["decision_rule"]) == (
        "'=bo", "'+1 for the glow", "4", "latest")
    assert (rows[1]["decision"], rows[1]["ana: decision"], rows[1]["'=bo: stars"]) == ("rejected", "rejected", "")


def test_run_export_uses_the_configured_rule(engine, settings: Settings, desk: Desk, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = desk.it(1, "p00")
    with session(engine) as s:
        act(s, "ana", [a], "approve")
        s.commit()
        act(s, "bo", [a], "reject")
        s.commit()
        with pytest.raises(ExportError, match="no approved images"):
            build_zip(s, settings, [1], tmp_path / "latest.zip")  # latest: bo's rejection is in force
        with pytest.raises(ExportError, match="no approved images"):
            build_zip(s, settings, [1], tmp_path / "m.zip", rule="majority")  # 1–1 needs a tie-break
        act(s, "cy", [a], "approve")
        s.commit()
        assert build_zip(s, settings, [1], tmp_path / "m.zip", rule="majority").images == 1


# ---- upgrade ------------------------------------------------------------------------------------
@pytest.mark.empty_database  # builds a version-3 schema
def test_ratings_from_before_the_event_log_keep_their_decision_time(settings: Settings) -> None:
    engine = create_db_engine(settings.database_url)
    migrate(engine, upto="m003_routing_and_breaker_events")
    t = utcnow()
    with engine.begin() as conn:  # the columns of that version only
        conn.execute(sa.text("INSERT INTO prompt_set (id, name, source, sha256, prompt_count, meta, created_at) "
                             "VALUES (1, 'old', 'x.json', 'abc', 1, '{}', :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO prompt (id, prompt_set_id, position, key, title, scene, mood, prompt, negative_prompt, tags, meta) "
                             "VALUES (1, 1, 0, 'p1', '', '', '', 'A fox', '', '[]', '{}')"))
        conn.execute(sa.text("INSERT INTO run (id, prompt_set_id, name, status, config, output_dir, total, completed, failed, blocked, "
                             "cost_usd, error, cancel_requested, owner, created_at) "
                             "VALUES (1, 1, 'old run', 'completed', '{}', 'runs/1', 1, 1, 0, 0, 0, '', FALSE, '', :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO run_item (id, run_id, prompt_id, status, cost_usd, error_kind, error_message) "
                             "VALUES (1, 1, 1, 'completed', 0, '', '')"))
        conn.execute(sa.text("INSERT INTO iteration (id, run_item_id, number, prompt_text, negative_prompt, provider, model, parameters, "
                             "status, image_path, mime_type, sha256, error_kind, error_message, started_at, routing) "
                             "VALUES (1, 1, 1, 'A fox', '', 'offline', 'm', '{}', 'ok', 'results/p1/iteration_1.jpg', 'image/jpeg', "
                             "'h', '', '', :t, '{}')"), {"t": t})
        conn.execute(sa.text("INSERT INTO rating (iteration_id, reviewer, stars, decision, note, rated_at) "
                             "VALUES (1, 'ana', 4, 'approved', '', :t), (1, 'bo', 2, 'none', '', :t)"), {"t": t})
    engine.dispose()
    upgraded = open_database(settings)
    with session(upgraded) as s:
        rows = {r.reviewer: r for r in s.exec(select(Rating))}
        assert rows["ana"].decided_at is not None and rows["bo"].decided_at is None
        card = gallery_page(s, GalleryFilter()).cards[0]
        assert (card.decision, card.mean_stars) == ("approved", 3.0)
        assert undo_last(s, "ana") is None  # nothing in the log yet: nothing to undo, and no error
    upgraded.dispose()
