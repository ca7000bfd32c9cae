"""Prompts claimed by worker processes: a lease per prompt, renewed by a heartbeat.

A run executed by workers has no single owner (``run.owner`` stays ""): each of its prompts
(``run_item``) is claimed on its own with ``SELECT … FOR UPDATE SKIP LOCKED``, so any number of
workers on any machines share one run, and a claim never waits behind another worker's. A claim
is a lease (``lease_owner``, ``lease_until``) that the worker's heartbeat renews; a worker that
stops renewing (kill -9, a lost machine) loses its prompts when their leases run out, and the
next claim takes them again. The prompt's job then resumes it by the ledger's rules, so a step
already committed (its image, verdict or refinement, or the service's request id it was waiting
on) is never paid for again.

SQLite has no row locks: there ``FOR UPDATE SKIP LOCKED`` renders as nothing and the claim's
conditional UPDATE (checked by its row count) is what makes it exclusive, as SQLite serialises
writers anyway.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_, update
from sqlmodel import Session, col, select

from pipeline.runs.records import refresh_counts
from pipeline.store.models import Run, RunItem, utcnow

CLAIMABLE_RUNS = ("queued", "running")
OPEN_ITEM_STATUSES = ("pending", "running")  # not in TERMINAL_ITEM_STATUSES; the predicate of ix_run_item_open


@dataclass(frozen=True)
class Claim:
    item_id: int
    run_id: int


def _claimable(now: float) -> ColumnElement[bool]:
    """A prompt nobody holds: pending, or running under a lease that ran out."""
    return or_(col(RunItem.status) == "pending", and_(col(RunItem.status) == "running", col(RunItem.lease_until) < now))


def claim_next(s: Session, owner: str, lease_s: float, *, only_runs: set[int] | None = None) -> Claim | None:
    """Claim the next prompt of the oldest run open to workers (queued or running, owned by no single
    process, not being cancelled; among ``only_runs`` if given); commit; None when there is nothing to claim.

    Two steps, so the cost of a claim does not grow with a run's size: the runs open to workers
    (a handful of rows), then per run the first claimable prompt by ``ix_run_item_open`` (run_id, id)
    in id order, which stops at the first row it can lock. One statement joining the two made
    PostgreSQL read and sort every open prompt of the run on each claim (a 2,000-prompt run: ~1,000
    rows per claim), as it could not tell how few runs there are."""
    now = time.time()
    runs = (select(Run.id).where(col(Run.status).in_(CLAIMABLE_RUNS), col(Run.owner) == "", col(Run.cancel_requested).is_(False))
            .order_by(col(Run.id)))
    if only_runs is not None:
        runs = runs.where(col(Run.id).in_(only_runs))
    for run_id in [r for r in s.exec(runs).all() if r is not None]:
        query = (select(RunItem.id).where(col(RunItem.run_id) == run_id, col(RunItem.status).in_(OPEN_ITEM_STATUSES), _claimable(now))
                 .order_by(col(RunItem.id)).limit(1).with_for_update(skip_locked=True))
        for _ in range(5):  # SQLite only: another process took it between the SELECT and the UPDATE
            item_id = s.exec(query).first()
            if item_id is None:
                break
            taken = s.execute(
                update(RunItem).where(col(RunItem.id) == item_id, _claimable(now))
                .values(status="running", lease_owner=owner, lease_until=now + lease_s)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                s.execute(update(Run).where(col(Run.id) == run_id, col(Run.status) == "queued")
                          .values(status="running", started_at=utcnow(), finished_at=None, error=""))
                s.commit()
                return Claim(item_id=item_id, run_id=run_id)
            s.rollback()  # a fresh look for the retry
    s.rollback()
    return None


def renew(s: Session, owner: str, item_ids: list[int], lease_s: float) -> set[int]:
    """Extend this worker's leases; return the ids among ``item_ids`` it no longer holds (another
    worker reclaimed them after this one stalled past its lease: their jobs must stop)."""
    if not item_ids:
        return set()
    s.execute(
        update(RunItem).where(col(RunItem.lease_owner) == owner, col(RunItem.status) == "running", col(RunItem.id).in_(item_ids))
        .values(lease_until=time.time() + lease_s)
    )
    taken = set(s.exec(select(RunItem.id).where(col(RunItem.id).in_(item_ids), col(RunItem.lease_owner) != owner,
                                                col(RunItem.lease_owner) != "")).all())  # "": released by this worker itself
    s.commit()
    return {i for i in item_ids if i in taken}


def release(s: Session, owner: str, item_id: int, reason: str) -> None:
    """Give a prompt back unfinished (this worker stops): pending again, for the next claim."""
    s.execute(
        update(RunItem).where(col(RunItem.id) == item_id, col(RunItem.lease_owner) == owner, col(RunItem.status) == "running")
        .values(status="pending", stop_reason=reason, lease_owner="", lease_until=0.0)
    )
    s.commit()


def settle(s: Session, run_id: int) -> str:
    """Bring a worker-executed run's status up to date after one of its prompts ended; return it.

    Nothing left to do: ``completed``. Cancel requested and no prompt still held by a live lease:
    ``cancelled``. Otherwise the run stays as it is, for the workers still holding or about to
    claim its prompts."""
    run = s.get(Run, run_id)
    if run is None or run.owner or run.status not in CLAIMABLE_RUNS:
        return run.status if run is not None else ""
    now = time.time()
    held = s.exec(select(RunItem.id).where(RunItem.run_id == run_id, RunItem.status == "running",
                                           col(RunItem.lease_until) >= now).limit(1)).first()
    left = s.exec(select(RunItem.id).where(RunItem.run_id == run_id,  # by ix_run_item_open, not past the finished ones
                                           col(RunItem.status).in_(OPEN_ITEM_STATUSES)).limit(1)).first()
    status = run.status
    if left is None:
        status = "completed"
    elif run.cancel_requested and held is None:
        status = "cancelled"
    if status != run.status:
        taken = s.execute(update(Run).where(col(Run.id) == run_id, col(Run.status) == run.status, col(Run.owner) == "")
                          .values(status=status, finished_at=utcnow()))
        if taken.rowcount != 1:  # type: ignore[attr-defined]
            s.rollback()
            return settle(s, run_id)
        s.refresh(run)
        refresh_counts(s, run)  # in the same commit: whoever sees it ended sees its final counts
    s.commit()
    return status


def open_work(s: Session) -> int:
    """Prompts of runs open to workers not finished yet (pending, or held by some worker)."""
    return len(s.exec(
        select(RunItem.id).join(Run, col(Run.id) == RunItem.run_id)
        .where(col(Run.status).in_(CLAIMABLE_RUNS), col(Run.owner) == "", col(Run.cancel_requested).is_(False),
               col(RunItem.status).in_(("pending", "running"))).limit(1)
    ).all())


def held_by(s: Session, run_id: int) -> list[str]:
    """The workers holding live leases on ``run_id``'s prompts."""
    rows = s.exec(select(RunItem.lease_owner).where(RunItem.run_id == run_id, RunItem.status == "running",
                                                    col(RunItem.lease_until) >= time.time()).distinct()).all()
    return sorted(r for r in rows if r)
