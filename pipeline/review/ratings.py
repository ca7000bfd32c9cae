"""Reviewers' ratings: stars 1–5, a decision and a note per image, each reviewer's own.

Writes go through :mod:`pipeline.review.events` (an event row per change, undo, history); this
module reads them back per image (:func:`summaries`: mine, the others' with names, mean stars,
the decision in force) and runs bulk actions on an explicit, confirmed scope.

Why one reviewer's bulk approve used to blank another's stars: the grid and the manifest showed
each image's *most recent rating row, whoever wrote it*, stars included. The bulk approver's row
(a decision, no stars) became that row and hid the 5 stars still stored in the other reviewer's
row. Stars are now averaged over every reviewer and the decision follows an explicit rule
(:mod:`pipeline.review.decisions`), so no reviewer's row can mask another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_
from sqlmodel import Session, col, select

from pipeline.errors import InputError
from pipeline.review.decisions import InForce, Vote, decide
from pipeline.review.events import Outcome, act, act_many, validate_reviewer
from pipeline.review.gallery import GalleryFilter, Sort, selection_iteration_ids
from pipeline.store.models import DECISIONS, Iteration, Rating, RunItem

__all__ = ["validate_reviewer", "rate", "summaries", "bulk_scope", "bulk_apply", "best_iterations", "approve_best",
           "ReviewerRating", "ImageSummary", "BulkScope"]

_UNSET = object()
_DECISION_ACTIONS = {"approved": "approve", "rejected": "reject", "none": "clear_decision"}


def rate(s: Session, iteration_id: int, reviewer: str, *, stars: int | None | object = _UNSET,
         decision: str | object = _UNSET, note: str | object = _UNSET) -> Rating:
    """Set ``reviewer``'s stars, decision and/or note of an image (only the fields given) as one batch."""
    actions: list[tuple[str, int | str | None]] = []
    if stars is not _UNSET:
        actions.append(("clear_stars", None) if stars is None else ("star", stars))  # type: ignore[arg-type]
    if decision is not _UNSET:
        if decision not in DECISIONS:
            raise InputError(f"decision: {decision!r} is not one of {', '.join(DECISIONS)}")
        actions.append((_DECISION_ACTIONS[str(decision)], None))
    if note is not _UNSET:
        actions.append(("note", str(note)))
    name = validate_reviewer(reviewer)
    if actions:
        act_many(s, name, [iteration_id], actions)
    row = s.exec(select(Rating).where(Rating.iteration_id == iteration_id, Rating.reviewer == name)).first()
    if row is None:
        if s.get(Iteration, iteration_id) is None:
            raise InputError(f"iteration {iteration_id} does not exist")
        row = Rating(iteration_id=iteration_id, reviewer=name)
    return row


# ---- Reading: one image's ratings summed up ------------------------------------------------------
@dataclass(frozen=True)
class ReviewerRating:
    reviewer: str
    stars: int | None
    decision: str
    note: str
    rated_at: datetime


@dataclass(frozen=True)
class ImageSummary:
    iteration_id: int
    mine: ReviewerRating | None
    others: list[ReviewerRating]  # newest first, each with its reviewer's name
    mean_stars: float | None
    star_count: int
    in_force: InForce

    @property
    def reviewers(self) -> int:
        return len(self.others) + (self.mine is not None)


def summaries(s: Session, iteration_ids: Sequence[int], reviewer: str, rule: str = "latest") -> dict[int, ImageSummary]:
    """Per image: my rating, the others' with names, mean stars and count, the decision in force (one query)."""
    ids = list(dict.fromkeys(iteration_ids))
    me = reviewer.strip()
    by: dict[int, list[Rating]] = {i: [] for i in ids}
    for part in (ids[i:i + 500] for i in range(0, len(ids), 500)):
        q = (select(Rating).where(col(Rating.iteration_id).in_(part),
                                  or_(col(Rating.stars).is_not(None), col(Rating.decision) != "none", col(Rating.note) != ""))
             .order_by(col(Rating.rated_at).desc(), col(Rating.id).desc()))
        for r in s.exec(q):
            by[r.iteration_id].append(r)
    out = {}
    for iteration_id, rows in by.items():
        given = [r.stars for r in rows if r.stars is not None]
        views = [ReviewerRating(r.reviewer, r.stars, r.decision, r.note, r.rated_at) for r in rows]
        out[iteration_id] = ImageSummary(
            iteration_id=iteration_id,
            mine=next((v for v in views if me and v.reviewer == me), None),
            others=[v for v in views if v.reviewer != me],
            mean_stars=sum(given) / len(given) if given else None,
            star_count=len(given),
            in_force=decide((Vote(r.reviewer, r.decision, r.decided_at) for r in rows), rule),
        )
    return out


# ---- Bulk actions: on an explicit, confirmed scope -----------------------------------------------
@dataclass(frozen=True)
class BulkScope:
    count: int
    description: str  # for the confirmation: "42 selected images" / "all 1,001 images matching: run 3 · best only"
    iteration_ids: tuple[int, ...]  # resolved when previewed: applying acts on exactly what was confirmed


def bulk_scope(s: Session, *, iteration_ids: Sequence[int] = (), filter: GalleryFilter | None = None, reviewer: str = "",
               rule: str = "latest", disputed_star_spread: int = 2) -> BulkScope:
    """What a bulk action would touch: an explicit selection, or everything the current filter shows."""
    if iteration_ids and filter is not None:
        raise InputError("a bulk action applies to the selected images or to the filter, not both")
    if iteration_ids:
        ids = tuple(dict.fromkeys(int(i) for i in iteration_ids))
        known: set[int | None] = set()
        for part in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            known.update(s.exec(select(Iteration.id).where(col(Iteration.id).in_(part), Iteration.status == "ok")).all())
        ids = tuple(i for i in ids if i in known)
        return BulkScope(len(ids), f"{len(ids):,} selected image{'' if len(ids) == 1 else 's'}", ids)
    if filter is None:
        raise InputError("a bulk action needs a selection of images or a filter; it never applies to every run silently")
    ids = tuple(selection_iteration_ids(s, filter, sort=Sort(), reviewer=reviewer, rule=rule,
                                        disputed_star_spread=disputed_star_spread))
    return BulkScope(len(ids), f"all {len(ids):,} image{'' if len(ids) == 1 else 's'} matching: {filter.describe()}", ids)


def bulk_apply(s: Session, reviewer: str, scope: BulkScope, action: str, value: int | str | None = None, *,
               note_max_chars: int = 4000) -> Outcome:
    """Apply ``action`` to every image of the confirmed scope as one batch: one undo reverses all of it."""
    if not scope.iteration_ids:
        raise InputError(f"nothing to apply {action.replace('_', ' ')} to: {scope.description}")
    return act(s, reviewer, scope.iteration_ids, action, value, scope=scope.description, note_max_chars=note_max_chars)


def best_iterations(s: Session, min_score: float, run_ids: tuple[int, ...] = ()) -> list[int]:
    """The best iteration of every prompt whose best score is at least ``min_score`` (all runs if none given)."""
    q = (
        select(col(Iteration.id)).join(RunItem, col(RunItem.id) == col(Iteration.run_item_id))
        .where(col(Iteration.number) == col(RunItem.final_iteration), col(Iteration.status) == "ok",
               col(RunItem.best_score) >= min_score)
        .order_by(col(RunItem.run_id), col(RunItem.id))
    )
    if run_ids:
        q = q.where(col(RunItem.run_id).in_(run_ids))
    return [i for i in s.exec(q).all() if i is not None]


def approve_best(s: Session, reviewer: str, min_score: float, run_ids: tuple[int, ...] = ()) -> int:
    """Approve, as ``reviewer`` and as one batch, the best iteration of every prompt scoring at least ``min_score``."""
    ids = best_iterations(s, min_score, run_ids)
    if ids:
        where = f"runs {', '.join(map(str, run_ids))}" if run_ids else "every run"
        act(s, reviewer, ids, "approve", scope=f"best iteration of each prompt scoring ≥ {min_score:g} in {where}")
    return len(ids)
