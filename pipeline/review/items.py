"""A run's prompts with all their iterations, scores, prompt diffs and reviews, a page at a time.

What the Review page shows for one prompt (:func:`pipeline.review.gallery.prompt_detail`), for
many prompts at once in a fixed number of queries whatever the page size, as typed rows. The
API's ``GET /v1/runs/{id}/items`` builds the same answer straight from Core SQL
(:mod:`pipeline.api.itemspage`, four times cheaper); ``tests/test_items_page.py`` holds the two
equal. Thumbnails are not read: a client fetches the images it shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, select

from pipeline.review.ratings import ImageSummary, summaries
from pipeline.review.steps import step_before
from pipeline.review.textdiff import Part
from pipeline.store.models import Evaluation, Iteration, Prompt, Refinement, RunItem, row_id


@dataclass(frozen=True)
class IterationReview:
    iteration: Iteration
    evaluation: Evaluation | None
    diff: list[Part] | None  # from the previous iteration's prompt; None for the first
    rationale: str  # the refiner's reason for this iteration's prompt
    score_delta: float | None
    reviews: ImageSummary | None  # None for an iteration that made no image


@dataclass(frozen=True)
class ItemReview:
    item: RunItem
    prompt: Prompt
    iterations: list[IterationReview]


def run_items(s: Session, run_id: int, *, after_position: int = -1, limit: int = 100, reviewer: str = "",
              rule: str = "latest") -> list[ItemReview]:
    """The run's prompts after ``after_position`` (their place in the set), at most ``limit``: four queries."""
    pairs = s.exec(
        select(RunItem, Prompt).join(Prompt, col(Prompt.id) == RunItem.prompt_id)
        .where(RunItem.run_id == run_id, col(Prompt.position) > after_position).order_by(col(Prompt.position)).limit(max(1, limit))
    ).all()
    ids = [row_id(item) for item, _ in pairs]
    rows = s.exec(
        select(Iteration, Evaluation).join(Evaluation, col(Evaluation.iteration_id) == Iteration.id, isouter=True)
        .where(col(Iteration.run_item_id).in_(ids)).order_by(col(Iteration.run_item_id), col(Iteration.number))
    ).all() if ids else []
    refinements: dict[int, dict[int, Refinement]] = {}
    for r in (s.exec(select(Refinement).where(col(Refinement.run_item_id).in_(ids))) if ids else ()):
        refinements.setdefault(r.run_item_id, {})[r.from_iteration] = r
    images = [row_id(it) for it, _ in rows if it.status == "ok"]
    reviews = summaries(s, images, reviewer, rule) if images else {}
    by_item: dict[int, list[tuple[Iteration, Evaluation | None]]] = {}
    for row_it, row_ev in rows:
        by_item.setdefault(row_it.run_item_id, []).append((row_it, row_ev))
    out = []
    for item, prompt in pairs:
        views: list[IterationReview] = []
        previous: tuple[Iteration, Evaluation | None] | None = None
        for it, ev in by_item.get(row_id(item), []):
            prev_it: Iteration | None = previous[0] if previous else None
            prev_ev: Evaluation | None = previous[1] if previous else None
            diff, rationale = step_before(it, prev_it, refinements.get(row_id(item), {}))
            views.append(IterationReview(
                iteration=it, evaluation=ev, diff=diff, rationale=rationale,
                score_delta=(ev.overall_score - prev_ev.overall_score) if ev and prev_ev else None,
                reviews=reviews.get(row_id(it)),
            ))
            previous = (it, ev)
        out.append(ItemReview(item, prompt, views))
    return out

