"""The review domain under the dashboard: gallery queries, ratings, bulk approval, diffs, charts' figures, estimates."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.prompts.promptset import PromptSpec
from pipeline.review.gallery import UNRATED, GalleryFilter, gallery_page, prompt_detail
from pipeline.review.ratings import approve_best, rate
from pipeline.review.stats import percentile, spearman
from pipeline.review.textdiff import diff_counts, diff_html, word_diff
from pipeline.runs.estimate import estimate_run
from pipeline.runs.records import RunConfig
from pipeline.store.db import session
from pipeline.store.models import Iteration, Rating, RunItem
from tests.conftest import make_prompts, run_cli, write_prompt_set


@pytest.fixture
def reviewed(tmp_path: Path, engine):  # type: ignore[no-untyped-def]
    assert run_cli("run", write_prompt_set(tmp_path / "s.json", make_prompts(15)), "--iterations", "2").code == 0
    with session(engine) as s:
        return [it.id for it in s.exec(select(Iteration).order_by(Iteration.id))]


def test_gallery_pages_in_sql_with_thumbnails_and_clamps_the_page(engine, reviewed: list[int]) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        first = gallery_page(s, GalleryFilter(), 1, 24)
        second = gallery_page(s, GalleryFilter(), 2, 24)
        beyond = gallery_page(s, GalleryFilter(), 99, 24)
    total = len(reviewed)
    assert first.total == total and first.pages == 2
    assert len(first.cards) == 24 and len(second.cards) == total - 24
    assert beyond.page == 2
    assert {c.iteration_id for c in first.cards}.isdisjoint({c.iteration_id for c in second.cards})
    assert all(c.thumb and c.thumb[:2] == b"\xff\xd8" for c in first.cards)  # JPEG thumbnails, not full images
    assert [c.prompt_key for c in first.cards[:2]] == ["p000", "p000"]


def test_filters_on_score_stars_and_the_decision_in_force(engine, reviewed: list[int]) -> None:  # type: ignore[no-untyped-def]
    a, b = reviewed[0], reviewed[1]
    with session(engine) as s:
        rate(s, a, "ana", stars=5, decision="approved")
        s.commit()
        rate(s, a, "bo", decision="rejected")  # later: bo's decision is the one in force
        rate(s, b, "ana", stars=2)
        s.commit()
        by_decision = {d: gallery_page(s, GalleryFilter(decisions=(d,))).total for d in ("approved", "rejected", "none")}
        assert by_decision == {"approved": 0, "rejected": 1, "none": len(reviewed) - 1}
        assert [c.iteration_id for c in gallery_page(s, GalleryFilter(stars=(2,))).cards] == [b]
        # bo's later decision (no stars) does not hide ana's 5 stars: stars are every reviewer's mean
        assert [c.iteration_id for c in gallery_page(s, GalleryFilter(stars=(5,))).cards] == [a]
        assert gallery_page(s, GalleryFilter(stars=(UNRATED,))).total == len(reviewed) - 2
        high = gallery_page(s, GalleryFilter(score_min=9.5, score_max=10)).cards
        assert high and all(c.score >= 9.5 for c in high)
        with pytest.raises(InputError, match="score range"):
            gallery_page(s, GalleryFilter(score_min=8, score_max=3))


def test_two_reviewers_rating_the_same_iteration_at_once_both_kept(engine, reviewed: list[int]) -> None:  # type: ignore[no-untyped-def]
    target = reviewed[0]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def review(name: str, stars: int) -> None:
        try:
            with session(engine) as s:
                barrier.wait()
                rate(s, target, name, stars=stars, decision="approved")
                s.commit()
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    # two reviewers, each twice at the same moment (two tabs): one row per reviewer, none lost
    threads = [threading.Thread(target=review, args=(n, st)) for n, st in (("ana", 4), ("bo", 2), ("ana", 4), ("bo", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with session(engine) as s:
        rows = s.exec(select(Rating).where(Rating.iteration_id == target)).all()
    assert sorted((r.reviewer, r.stars) for r in rows) == [("ana", 4), ("bo", 2)]


def test_bulk_approval_takes_the_best_iteration_of_each_prompt_at_or_above_the_score(engine, reviewed: list[int]) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        items = s.exec(select(RunItem)).all()
        threshold = sorted(i.best_score for i in items)[len(items) // 2]
        expected = {(i.id, i.final_iteration) for i in items if i.best_score >= threshold}
        assert approve_best(s, "ana", threshold) == len(expected)
        s.commit()
        approved = s.exec(select(Iteration).join(Rating, Rating.iteration_id == Iteration.id).where(Rating.decision == "approved")).all()
    assert {(it.run_item_id, it.number) for it in approved} == expected


def test_detail_has_every_iteration_with_diff_score_change_and_my_rating(engine, reviewed: list[int]) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        item = next(i for i in s.exec(select(RunItem)) if len(s.exec(select(Iteration).where(Iteration.run_item_id == i.id)).all()) == 2)
        first_it = s.exec(select(Iteration).where(Iteration.run_item_id == item.id, Iteration.number == 1)).one()
        rate(s, first_it.id, "ana", stars=3)
        rate(s, first_it.id, "bo", stars=5)
        s.commit()
        d = prompt_detail(s, item.id, "ana")
    one, two = d.iterations
    assert one.diff is None and two.diff is not None
    assert two.score_delta == pytest.approx(two.evaluation.overall_score - one.evaluation.overall_score)
    assert two.rationale  # the refiner's reason is shown with the diff
    assert one.mine.stars == 3 and {r.reviewer for r in one.ratings} == {"ana", "bo"}
    with pytest.raises(InputError, match="no prompt 9999"):
        with session(engine) as s:
            prompt_detail(s, 9999)


def test_word_diff_marks_insertions_and_deletions_and_escapes_html() -> None:
    parts = word_diff("A red fox at dusk.", "A red <fox> at dawn, high contrast.")
    assert [(p.op, p.text.strip()) for p in parts if p.op != "equal"] == [
        ("delete", "fox"), ("insert", "<fox>"), ("delete", "dusk."), ("insert", "dawn, high contrast.")]
    assert diff_counts(parts) == (4, 2)
    html = diff_html(parts)
    assert "&lt;fox&gt;" in html and "<fox>" not in html
    assert "".join(p.text for p in parts if p.op != "delete") == "A red <fox> at dawn, high contrast."


def test_percentiles_and_agreement() -> None:
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([1.0] * 3 + [100.0], 95) == pytest.approx(85.15)
    assert spearman([1, 2, 3, 4], [1, 2, 3, 5]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None


def test_estimate_counts_calls_and_prices_from_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "prices.toml"
    config_file.write_text("[providers.offline]\nprice_per_megapixel = 0.01\n[judges.offline]\nprice_per_call = 0.002\n")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config_file))
    settings = Settings.from_env()
    prompts = [PromptSpec(id="a", prompt="x"), PromptSpec(id="b", prompt="y", size="2048x1024")]
    e = estimate_run(settings, RunConfig(iterations=3), prompts)
    assert (e.generations, e.evaluations, e.refinements, e.calls) == (6, 6, 4, 16)
    # 1024² = 2 started megapixels, 2048×1024 = 3; ×3 iterations; judge 6 × 0.002; refiner free
    assert e.cost_usd == pytest.approx((2 + 3) * 0.01 * 3 + 6 * 0.002)
    assert e.unpriced == ()
