"""Reviewers' ratings: stars 1–5, a decision and a note per iteration, one row per reviewer."""

from __future__ import annotations

from sqlalchemy import Subquery, func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from pipeline.errors import InputError
from pipeline.store.models import DECISIONS, Iteration, Rating, RunItem, utcnow

_UNSET = object()


def _find(s: Session, iteration_id: int, reviewer: str) -> Rating | None:
    return s.exec(select(Rating).where(Rating.iteration_id == iteration_id, Rating.reviewer == reviewer)).first()


def rate(s: Session, iteration_id: int, reviewer: str, *, stars: int | None | object = _UNSET,
         decision: str | object = _UNSET, note: str | object = _UNSET) -> Rating:
    """Create or update ``reviewer``'s rating of an iteration; only the fields given change."""
    reviewer = reviewer.strip()
    if not reviewer:
        raise InputError("reviewer: give a name so ratings can be told apart")
    if s.get(Iteration, iteration_id) is None:
        raise InputError(f"iteration {iteration_id} does not exist")
    if stars is not _UNSET and stars is not None and (isinstance(stars, bool) or not isinstance(stars, int) or not 1 <= stars <= 5):
        raise InputError(f"stars: {stars!r} is not a whole number from 1 to 5")
    if decision is not _UNSET and decision not in DECISIONS:
        raise InputError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
    rating = _find(s, iteration_id, reviewer)
    if rating is None:
        # Two tabs of one reviewer may insert at once: the loser of the unique key updates instead.
        try:
            with s.begin_nested():
                rating = Rating(iteration_id=iteration_id, reviewer=reviewer)
                s.add(rating)
                s.flush()
        except IntegrityError:
            rating = _find(s, iteration_id, reviewer)
    if stars is not _UNSET:
        rating.stars = stars  # type: ignore[assignment]
    if decision is not _UNSET:
        rating.decision = decision  # type: ignore[assignment]
    if note is not _UNSET:
        rating.note = str(note)
    rating.rated_at = utcnow()
    s.add(rating)
    return rating


def best_iterations(s: Session, min_score: float, run_ids: tuple[int, ...] = ()) -> list[int]:
    """The best iteration of every prompt whose best score is at least ``min_score`` (all runs if none given)."""
    q = (
        select(Iteration.id).join(RunItem, RunItem.id == Iteration.run_item_id)
        .where(Iteration.number == RunItem.final_iteration, Iteration.status == "ok", col(RunItem.best_score) >= min_score)
        .order_by(RunItem.run_id, RunItem.id)
    )
    if run_ids:
        q = q.where(col(RunItem.run_id).in_(run_ids))
    return list(s.exec(q).all())


def approve_best(s: Session, reviewer: str, min_score: float, run_ids: tuple[int, ...] = ()) -> int:
    """Approve, as ``reviewer``, the best iteration of every prompt scoring at least ``min_score``."""
    ids = best_iterations(s, min_score, run_ids)
    for iteration_id in ids:
        rate(s, iteration_id, reviewer, decision="approved")
    return len(ids)


def latest_ratings_query() -> Subquery:
    """Each iteration's most recent rating, whoever gave it: the decision in force.

    Columns ``iteration_id, stars, decision, reviewer, note``; ties on time go to the newer row.
    """
    ranked = select(
        Rating.iteration_id, Rating.stars, Rating.decision, Rating.reviewer, Rating.note,
        func.row_number().over(partition_by=Rating.iteration_id, order_by=(col(Rating.rated_at).desc(), col(Rating.id).desc())).label("rn"),
    ).subquery()
    return (select(ranked.c.iteration_id, ranked.c.stars, ranked.c.decision, ranked.c.reviewer, ranked.c.note)
            .where(ranked.c.rn == 1).subquery("latest_rating"))
