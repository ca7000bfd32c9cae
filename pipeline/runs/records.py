"""Runs as records: creating them, reading their state, and who is executing them.

These are the functions the CLI and the dashboard share. A run belongs to the process that
claimed it (``owner`` = host:pid, refreshed by a heartbeat); a run left ``running`` by a dead
process is found by :func:`recover_orphans` and marked ``interrupted`` so it can be resumed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import InputError, RunStateError
from pipeline.files import unused_folder
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.store.models import (
    DEFAULT_PROJECT,
    MAX_ROW_ID,
    TERMINAL_ITEM_STATUSES,
    Evaluation,
    Iteration,
    Project,
    Prompt,
    PromptReference,
    PromptSet,
    ProviderCall,
    Run,
    RunItem,
    row_id,
    utcnow,
)
from pipeline.store.objects import bucket_holds
from pipeline.store.references import relative_path

log = logging.getLogger("pipeline.runs.records")
HEARTBEAT_SECONDS = 2.0
STALE_AFTER = timedelta(seconds=30)


@dataclass
class RunConfig:
    providers: list[str] = field(default_factory=lambda: ["offline"])  # ordered: the fallback chain
    judge: str = "offline"
    refiner: str = "offline"
    iterations: int = 2
    target_score: float | None = None
    concurrency: int = 3
    judge_fallbacks: list[str] = field(default_factory=list)  # tried in order when the judge fails for good
    refiner_fallbacks: list[str] = field(default_factory=list)
    routing: str = "fallback"  # or "pool": spread generations over the healthy providers
    block_rewrites: int = 1  # times the refiner may rewrite a blocked prompt to comply
    budget_usd: float | None = None  # pause the run before a call would spend past this
    enhance: bool = False  # rewrite each prompt before iteration 1 (a prompt with "enhance": false is skipped)
    grid: bool = False  # ask for 2x2 grids and split each into four images (a prompt's "grid" field overrides it)

    @property
    def judges(self) -> list[str]:
        return [self.judge, *self.judge_fallbacks]

    @property
    def refiners(self) -> list[str]:
        return [self.refiner, *self.refiner_fallbacks]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def validate(self, settings: Settings) -> None:
        """Refuse a bad setting with an :class:`InputError` whose ``field`` is the CLI option's name."""
        max_iterations, max_concurrency = settings.run.max_iterations, settings.run.max_concurrency
        if not self.providers:
            raise InputError("name at least one provider", field="providers")
        if not 1 <= self.iterations <= max_iterations:
            raise InputError(f"{self.iterations} is outside 1–{max_iterations}", field="iterations")
        if not 1 <= self.concurrency <= max_concurrency:
            raise InputError(f"{self.concurrency} is outside 1–{max_concurrency}", field="concurrency")
        if self.target_score is not None and not 0 <= self.target_score <= 10:
            raise InputError(f"{self.target_score} is outside 0–10", field="target_score")
        if self.routing not in ("fallback", "pool"):
            raise InputError(f"{self.routing!r} is not one of fallback, pool", field="routing")
        if not 0 <= self.block_rewrites <= 3:
            raise InputError(f"{self.block_rewrites} is outside 0–3", field="block_rewrites")
        if self.budget_usd is not None and self.budget_usd <= 0:
            raise InputError(f"{self.budget_usd} must be more than 0 (leave it out for no cap)", field="budget")
        for role, names in (("providers", self.providers), ("judge", self.judges), ("refiner", self.refiners)):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise InputError(f"{', '.join(repeated)} named more than once", field=role)


def default_seed(prompt_key: str) -> int:
    """A stable seed for a prompt without one, so reruns reproduce the same first image."""
    return int.from_bytes(hashlib.sha256(prompt_key.encode()).digest()[:4], "big")


def this_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# Runs this process is executing right now (RunExecutor.execute adds and removes them). A run
# whose owner is this very process is alive only while it is in here: after a run ended without
# recording its end (its last write refused by a full disk, say), the same process may resume it.
EXECUTING_HERE: set[int] = set()


def owner_alive(run: Run, now: datetime | None = None) -> bool:
    now = now or utcnow()
    if not run.owner:  # executed by worker processes (pipeline.runs.leases): alive while one of them heart-beats it
        return run.status == "running" and run.heartbeat_at is not None and now - run.heartbeat_at < STALE_AFTER
    host, _, pid = run.owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        if int(pid) == os.getpid():
            return run.id in EXECUTING_HERE
    return run.heartbeat_at is not None and now - run.heartbeat_at < STALE_AFTER


# ---- Creating ---------------------------------------------------------------------------------
def import_prompt_set(s: Session, spec: PromptSetSpec) -> PromptSet:
    """Store a prompt set, or return the stored one with the same content and name. Its reference
    images are rows pointing into the data folder's store (written by ``store_references``)."""
    existing = s.exec(select(PromptSet).where(PromptSet.sha256 == spec.sha256, PromptSet.name == spec.name)).first()
    if existing is not None and spec.sha256:
        return existing
    ps = PromptSet(name=spec.name, source=spec.source, sha256=spec.sha256, prompt_count=len(spec.prompts), meta=spec.metadata)
    s.add(ps)
    s.flush()
    for position, p in enumerate(spec.prompts):
        row = Prompt(
            prompt_set_id=row_id(ps), position=position, key=p.id, title=p.title, scene=p.scene, mood=p.mood,
            prompt=p.prompt, negative_prompt=p.negative_prompt, seed=p.seed, size=p.size, tags=list(p.tags), meta=p.metadata,
            style=p.style, template=p.template, characters=[c.as_record() for c in p.characters],
        )
        s.add(row)
        refs = p.all_references()
        if refs:
            s.flush()
            s.add_all(PromptReference(prompt_id=row_id(row), position=i, role=r.role, name=r.path, character=r.character,
                                      sha256=r.sha256, mime_type=r.mime_type, byte_size=r.byte_size, path=relative_path(r.sha256, r.mime_type))
                      for i, r in enumerate(refs))
    return ps


def stored_output_dir(settings: Settings, output_dir: Path) -> str:
    """Inside the data folder the path is stored relative to it, so the folder can move."""
    resolved = output_dir.resolve()
    try:
        return str(resolved.relative_to(settings.data_dir))
    except ValueError:
        return str(resolved)


def output_dir_of(settings: Settings, run: Run) -> Path:
    path = Path(run.output_dir)
    return path if path.is_absolute() else settings.data_dir / path


def create_run(s: Session, settings: Settings, prompt_set: PromptSet, config: RunConfig, *,
               output_dir: Path | None = None, name: str = "", claim: bool = False, project: Project | None = None) -> Run:
    """Queue a run of every prompt in ``prompt_set``. ``output_dir`` defaults to ``data/runs/<project>/<id>``
    (``data/runs/<id>`` without a project).

    ``claim=True`` (the CLI, which executes the run itself) creates it already owned by this
    process, so a dashboard's background runner sharing the database never picks it up.
    """
    run = Run(prompt_set_id=row_id(prompt_set), name=name or prompt_set.name, config=config.to_dict(), status="queued",
              project_id=project.id if project is not None else None)
    if claim:
        _claim(run)
    s.add(run)
    s.flush()
    parent = settings.runs_dir / project.slug if project is not None and project.name != DEFAULT_PROJECT else settings.runs_dir
    run.output_dir = stored_output_dir(settings, output_dir or _default_output_dir(s, settings, run.id or 0, parent))
    prompt_ids = s.exec(select(Prompt.id).where(Prompt.prompt_set_id == prompt_set.id).order_by(col(Prompt.position))).all()
    for pid in prompt_ids:
        assert pid is not None  # a stored prompt's primary key
        s.add(RunItem(run_id=row_id(run), prompt_id=pid))
    run.total = len(prompt_ids)
    return run


def _default_output_dir(s: Session, settings: Settings, run_id: int, parent: Path) -> Path:
    """``<parent>/<id>``, unless it holds files the database does not know (the database was
    deleted or emptied, and ids start again): then the next free ``<parent>/<id>-2``, and say so."""
    wanted = parent / str(run_id)
    chosen = unused_folder(wanted, taken=lambda p: s.exec(select(Run.id).where(
        Run.output_dir == stored_output_dir(settings, p), Run.id != run_id)).first() is not None
        or bucket_holds(settings, stored_output_dir(settings, p)))  # with DARKROOM_STORAGE_URL: objects in the bucket
    if chosen != wanted:
        log.warning("run %s: %s holds the files of a run this database does not know; they are left untouched, "
                    "and this run writes to %s instead", run_id, wanted, chosen)
    return chosen


def check_output_dir_empty(output_dir: Path) -> None:
    """Refuse a folder whose results/ already holds files (checked before anything is written)."""
    results = output_dir / "results"
    if results.is_dir() and any(results.iterdir()):
        raise InputError(f"{results} is not empty; choose another folder so no earlier files are overwritten", field="output")


def check_output_dir_unclaimed(settings: Settings, s: Session, output_dir: Path) -> None:
    """Refuse an output folder another run writes to, even an empty one: its records point there."""
    other = s.exec(select(Run).where(Run.output_dir == stored_output_dir(settings, output_dir))).first()
    if other is not None:
        raise InputError(
            f"{output_dir} already belongs to run {other.id} ({other.status}); "
            f"choose another folder, or resume that run with: python -m pipeline resume {other.id}", field="output",
        )


# ---- Reading ----------------------------------------------------------------------------------


def get_run(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id) if 0 < run_id <= MAX_ROW_ID else None
    if run is None:
        raise RunStateError(f"no run {run_id}; `python -m pipeline status` lists the runs")
    return run


def list_runs(s: Session, limit: int = 50) -> list[Run]:
    return list(s.exec(select(Run).order_by(col(Run.id).desc()).limit(limit)))


def run_ids_page(s: Session, *, before: int | None = None, limit: int = 20, statuses: tuple[str, ...] = (),
                 name_contains: str = "") -> list[int]:
    """Ids of the newest runs older than run ``before`` (cursor pagination), optionally of some statuses or names."""
    q = select(Run.id).order_by(col(Run.id).desc()).limit(limit)
    if before is not None:
        q = q.where(col(Run.id) < before)
    if statuses:
        q = q.where(col(Run.status).in_(statuses))
    if name_contains:
        q = q.where(func.lower(Run.name).contains(name_contains.lower(), autoescape=True))
    return [i for i in s.exec(q).all() if i is not None]


@dataclass(frozen=True)
class ItemState:
    prompt_key: str
    title: str
    status: str
    iterations: int
    best_score: float | None
    final_iteration: int | None
    cost_usd: float
    error: str
    stop_reason: str = ""  # why it stopped (pipeline.display.STOP_REASONS)


def item_states(s: Session, run_id: int) -> list[ItemState]:
    iteration_count = (
        select(Iteration.run_item_id, func.count().label("n"))
        .where(Iteration.status == "ok").group_by(col(Iteration.run_item_id)).subquery()
    )
    rows = s.exec(
        select(RunItem, Prompt, iteration_count.c.n)
        .join(Prompt, col(Prompt.id) == RunItem.prompt_id)
        .join(iteration_count, iteration_count.c.run_item_id == RunItem.id, isouter=True)
        .where(RunItem.run_id == run_id).order_by(col(Prompt.position))
    ).all()
    return [
        ItemState(p.key, p.title, item.status, n or 0, item.best_score, item.final_iteration, item.cost_usd,
                  f"{item.error_kind}: {item.error_message}" if item.error_message else "", item.stop_reason)
        for item, p, n in rows
    ]


ACTIVE_RUN_STATUSES = ("queued", "running")


@dataclass(frozen=True)
class RunSummary:
    """A run's counts, the one shape the CLI's bar and summary, ``status`` and the Runs page all
    show. Counts come from the run's prompts (live while it runs); ``elapsed_s`` is the run's
    wall time, or this execution's when the runner reports it."""

    id: int
    name: str
    status: str
    total: int
    completed: int
    failed: int
    blocked: int
    running: int
    cost_usd: float
    elapsed_s: float | None
    created_at: datetime
    config: dict[str, Any]
    error: str

    @property
    def done(self) -> int:
        return self.completed + self.failed + self.blocked

    @property
    def unfinished(self) -> int:
        return self.total - self.done

    @property
    def fraction(self) -> float:
        """The share of prompts that completed (failed and blocked ones never fill the bar)."""
        return self.completed / self.total if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_RUN_STATUSES

    @property
    def outcome(self) -> str:
        """The status as a person should read it: a run that reached its end with no prompt
        completed is ``failed`` (``blocked`` when every one was blocked), one with some failed or
        blocked prompts ``partial``; any other run, its status."""
        if self.status != "completed" or not (self.failed or self.blocked):
            return self.status
        if self.completed:
            return "partial"
        return "failed" if self.failed else "blocked"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values (``status --json``)."""
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return {**data, "outcome": self.outcome, "done": self.done}


def summary_of(run: Run, *, running: int = 0, elapsed_s: float | None = None) -> RunSummary:
    """The summary of a run whose counts were just refreshed (:func:`refresh_counts`)."""
    if elapsed_s is None and run.started_at:
        elapsed_s = ((run.finished_at or utcnow()) - run.started_at).total_seconds()
    return RunSummary(id=row_id(run), name=run.name, status=run.status, total=run.total, completed=run.completed, failed=run.failed,
                      blocked=run.blocked, running=running, cost_usd=run.cost_usd, elapsed_s=elapsed_s, created_at=run.created_at,
                      config=run.config, error=run.error)


def run_summaries(s: Session, limit: int = 50, now: datetime | None = None, *, run_ids: list[int] | None = None) -> list[RunSummary]:
    """The newest runs (or those of ``run_ids``) with their live counts and cost: three queries
    whatever the number of runs."""
    if run_ids is None:
        runs = list_runs(s, limit)
    else:
        runs = list(s.exec(select(Run).where(col(Run.id).in_(run_ids)).order_by(col(Run.id).desc())))
    if not runs:
        return []
    ids = [r.id for r in runs]
    counts: dict[int, dict[str, int]] = {}
    for run_id, status, n in s.exec(
        select(RunItem.run_id, RunItem.status, func.count()).where(col(RunItem.run_id).in_(ids)).group_by(col(RunItem.run_id), col(RunItem.status))
    ).all():
        counts.setdefault(run_id, {})[status] = n
    costs = dict(s.exec(
        select(ProviderCall.run_id, func.coalesce(func.sum(ProviderCall.cost_usd), 0.0))
        .where(col(ProviderCall.run_id).in_(ids)).group_by(col(ProviderCall.run_id))
    ).all())
    now = now or utcnow()
    out = []
    for r in runs:
        rid = row_id(r)
        c = counts.get(rid, {})
        elapsed = ((r.finished_at or now) - r.started_at).total_seconds() if r.started_at else None
        out.append(RunSummary(
            id=rid, name=r.name, status=r.status, total=sum(c.values()), completed=c.get("completed", 0), failed=c.get("failed", 0),
            blocked=c.get("blocked", 0), running=c.get("running", 0), cost_usd=float(costs.get(r.id) or 0.0), elapsed_s=elapsed,
            created_at=r.created_at, config=r.config, error=r.error,
        ))
    return out


def run_summary(s: Session, run_id: int) -> RunSummary:
    get_run(s, run_id)  # a clear message for an unknown id
    return run_summaries(s, run_ids=[run_id])[0]


def prompt_keys(s: Session, run_id: int) -> dict[int, str]:
    """Each of the run's items by its prompt's id in the set (what logs and messages name)."""
    rows = s.exec(select(RunItem.id, Prompt.key).join(Prompt, col(Prompt.id) == RunItem.prompt_id).where(RunItem.run_id == run_id)).all()
    return {item_id: key for item_id, key in rows if item_id is not None}  # stored rows: never None


def refresh_counts(s: Session, run: Run) -> None:
    """Recompute the run's counts and cost from its items and calls (derived, never drifted)."""
    counts = dict(s.exec(select(RunItem.status, func.count()).where(RunItem.run_id == run.id).group_by(col(RunItem.status))).all())
    run.total = sum(counts.values())
    run.completed = counts.get("completed", 0)
    run.failed = counts.get("failed", 0)
    run.blocked = counts.get("blocked", 0)
    cost = s.exec(select(func.coalesce(func.sum(ProviderCall.cost_usd), 0.0)).where(ProviderCall.run_id == run.id)).one()
    run.cost_usd = float(cost or 0.0)


def unfinished_items(s: Session, run_id: int) -> list[RunItem]:
    return list(s.exec(
        select(RunItem).join(Prompt, col(Prompt.id) == RunItem.prompt_id)
        .where(RunItem.run_id == run_id, col(RunItem.status).not_in(TERMINAL_ITEM_STATUSES))
        .order_by(col(Prompt.position))
    ))


# ---- Ownership and status -----------------------------------------------------------------
def recover_orphans(s: Session) -> list[int]:
    """Mark runs left ``running`` by a dead process as ``interrupted``; return their ids."""
    recovered = []
    for run in s.exec(select(Run).where(Run.status == "running")):
        if not owner_alive(run):
            run.status = "interrupted"
            run.owner = ""
            for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, RunItem.status == "running")):
                item.status, item.stop_reason = "pending", "interrupted"
            recovered.append(row_id(run))
    return recovered


def _claim(run: Run) -> None:
    run.status, run.owner, run.heartbeat_at = "running", this_owner(), utcnow()


def claim_next_queued(s: Session) -> int | None:
    """Take the oldest queued run for this process, or None. Atomic: of several processes
    sharing the database, exactly one gets each run."""
    for run_id in s.exec(select(Run.id).where(Run.status == "queued").order_by(col(Run.id))).all():
        if run_id is None:
            continue
        EXECUTING_HERE.add(run_id)  # before it shows as ours: this process's own recovery never takes it for dead
        taken = s.execute(
            update(Run).where(col(Run.id) == run_id, col(Run.status) == "queued")
            .values(status="running", owner=this_owner(), heartbeat_at=utcnow())
        )
        s.commit()
        if taken.rowcount == 1:  # type: ignore[attr-defined]
            return run_id
        EXECUTING_HERE.discard(run_id)
    return None


def claim_for_resume(s: Session, run: Run, *, retry_failed: bool = False, claim: bool = False,
                     budget_usd: float | None = None) -> None:
    """Check that ``run`` can be resumed and queue it again (``claim=True``: owned by this process).

    ``budget_usd`` replaces the run's spending cap (a run paused by its budget needs a higher one).
    """
    if run.status == "running" and owner_alive(run):
        raise RunStateError(f"run {run.id} is being executed right now by {run.owner or 'worker processes'}")
    if run.status == "deleting":
        raise RunStateError(f"run {run.id} is being deleted; finish with: python -m pipeline delete run {run.id}")
    if budget_usd is not None:
        config = RunConfig.from_dict(run.config)
        config.budget_usd = budget_usd
        run.config = config.to_dict()
    if run.status == "completed" and not retry_failed:
        raise RunStateError(f"run {run.id} is already completed; add --retry-failed to retry its failed prompts")
    if retry_failed:
        for item in s.exec(select(RunItem).where(RunItem.run_id == run.id, col(RunItem.status).in_(("failed", "blocked")))):
            item.status, item.error_kind, item.error_message, item.finished_at, item.stop_reason = "pending", "", "", None, ""
    run.status, run.cancel_requested, run.error, run.finished_at = "queued", False, "", None
    if claim:
        _claim(run)


def request_cancel(s: Session, run_id: int) -> Run:
    run = get_run(s, run_id)
    if run.status in ("queued", "interrupted"):
        run.status, run.finished_at = "cancelled", utcnow()
    elif run.status == "running":
        run.cancel_requested = True
    return run


def iterations_with_evaluations(s: Session, run_item_id: int) -> list[tuple[Iteration, Evaluation | None]]:
    rows = s.exec(
        select(Iteration, Evaluation).join(Evaluation, col(Evaluation.iteration_id) == Iteration.id, isouter=True)
        .where(Iteration.run_item_id == run_item_id).order_by(col(Iteration.number))
    ).all()
    return [(it, ev) for it, ev in rows]
