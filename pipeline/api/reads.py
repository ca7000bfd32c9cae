"""The hot reads of the busiest routes as statements built once (a bound id per request).

Building a SQLAlchemy statement and its cache key costs more than running it on SQLite; these
are built at import and run on a plain connection (no ORM session), one indexed read each.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from sqlalchemy import bindparam, func
from sqlalchemy.engine import Engine
from sqlmodel import col

from pipeline.store.models import Evaluation, Iteration, Rating, Refinement, ReviewEvent, Run, Thumbnail

ACTIVE = ("queued", "running")
ACTIVE_FRESH_S = 1.0  # an active run's page is rebuilt at least this often (a step's status changes in place)

_THUMBNAIL = sqlalchemy.select(col(Thumbnail.data), col(Thumbnail.mime_type), col(Iteration.sha256)).join(
    Iteration, col(Iteration.id) == col(Thumbnail.iteration_id)).where(col(Thumbnail.iteration_id) == bindparam("id"))

_ITEMS_VERSION = sqlalchemy.select(
    col(Run.status), col(Run.started_at), col(Run.finished_at), col(Run.completed), col(Run.failed),
    sqlalchemy.select(func.max(ReviewEvent.id)).scalar_subquery(), sqlalchemy.select(func.max(Rating.rated_at)).scalar_subquery(),
).where(col(Run.id) == bindparam("id"))

_ACTIVE_STAMP = sqlalchemy.select(  # new iterations, scores and refinements: index-only maxima
    sqlalchemy.select(func.max(Iteration.id)).scalar_subquery(), sqlalchemy.select(func.max(Evaluation.id)).scalar_subquery(),
    sqlalchemy.select(func.max(Refinement.id)).scalar_subquery(),
)


def thumbnail(engine: Engine, image_id: int) -> tuple[bytes, str, str] | None:
    """(bytes, media type, the image's sha256) of an image's thumbnail, or None."""
    with engine.connect() as conn:
        row = conn.execute(_THUMBNAIL, {"id": image_id}).first()
    return (row[0], row[1], row[2]) if row is not None else None


def items_version(engine: Engine, run_id: int) -> tuple[bool, tuple[Any, ...]]:
    """(whether run ``run_id`` exists, a value that differs whenever its items page may have).

    A stopped run changes only by reviews (each appends an event and stamps its rating). An
    active one also gains iterations, scores and refinements (new rows: seen at once), finishes
    prompts (the run's counts) and changes rows in place (a step's status): its version also
    turns every :data:`ACTIVE_FRESH_S`.
    """
    with engine.connect() as conn:
        row = conn.execute(_ITEMS_VERSION, {"id": run_id}).first()
        if row is None:
            return False, ()
        if row[0] not in ACTIVE:
            return True, tuple(row)
        stamp = conn.execute(_ACTIVE_STAMP).first()
    return True, (*row, *(stamp or ()), int(time.monotonic() / ACTIVE_FRESH_S))
