"""What an open gallery polls: one cheap number set that changes whenever there is new work to show.

A page that stays open (the Gallery, left in a tab) asks every second or so whether anything new
has arrived: a run launched or ended, an image made, a score given, from this process or any
other sharing the database. It must cost next to nothing when nothing has changed, so it is one
statement of index-only lookups (the largest primary keys and a count over the indexed run
status); the page redraws only when the answer differs from the one it drew.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from pipeline.runs.records import ACTIVE_RUN_STATUSES
from pipeline.store.models import Evaluation, Run, Thumbnail


@dataclass(frozen=True)
class LatestChange:
    """Equal to an earlier value exactly when the gallery has nothing new to show since then."""

    last_run: int  # the newest run's id: a launch
    active_runs: int  # runs queued or running: a start or an end
    last_image: int  # the newest thumbnail's image id: a new image (deleted ones lower it, which also differs)
    last_score: int  # the newest evaluation's id: a judge's score

    @property
    def running(self) -> bool:
        return self.active_runs > 0


def latest_change(s: Session) -> LatestChange:
    """The current :class:`LatestChange`, in one statement over indexes."""
    row = s.exec(select(
        select(func.coalesce(func.max(Run.id), 0)).scalar_subquery(),
        select(func.count()).select_from(Run).where(col(Run.status).in_(ACTIVE_RUN_STATUSES)).scalar_subquery(),
        select(func.coalesce(func.max(Thumbnail.iteration_id), 0)).scalar_subquery(),
        select(func.coalesce(func.max(Evaluation.id), 0)).scalar_subquery(),
    )).one()
    return LatestChange(*(int(v or 0) for v in row))
