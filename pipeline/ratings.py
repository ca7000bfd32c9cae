"""Reviewers' ratings: stars 1–5, a decision and a note per iteration, one row per reviewer."""

from __future__ import annotations

from sqlmodel import Session, select

from .errors import InputError
from .models import DECISIONS, Iteration, Rating, utcnow

_UNSET = object()


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
    rating = s.exec(select(Rating).where(Rating.iteration_id == iteration_id, Rating.reviewer == reviewer)).first()
    if rating is None:
        rating = Rating(iteration_id=iteration_id, reviewer=reviewer)
    if stars is not _UNSET:
        rating.stars = stars  # type: ignore[assignment]
    if decision is not _UNSET:
        rating.decision = decision  # type: ignore[assignment]
    if note is not _UNSET:
        rating.note = str(note)
    rating.rated_at = utcnow()
    s.add(rating)
    return rating
