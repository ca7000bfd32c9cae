"""Deleting runs and projects, and pruning images by policy: safe when interrupted, finished by running again.

Delete (``python -m pipeline delete run N | project NAME``; the Runs and Projects pages):

1. the run (every run of the project) is marked ``deleting`` and committed: from then on it
   cannot be resumed and ``doctor`` reports it as a delete to finish, not as damage;
2. the exports naming it are removed, then its folder (images, sidecars, ``run.json``);
3. its rows go in one transaction (iterations, thumbnails, evaluations, ratings, review events,
   refinements, the call log), then the project's row and folder.

With images in a bucket (``DARKROOM_STORAGE_URL``) step 2 starts with the run's objects (images,
sidecars, ``summary.json``: everything under its prefix, in ``DeleteObjects``
batches of 1,000), before anything local. When the bucket refuses (403, 5xx after the retries,
a timeout) before any object went, the run is put back as it was and nothing was deleted; when it
stops part-way, the run stays marked ``deleting`` with its rows, so nothing points at a deleted
object without saying so, and the message says to run the command again.

Prune (``python -m pipeline prune``; the Projects page) removes image files and their
thumbnails and keeps the iteration's record (prompt, score, cost) with no image. Each batch is
written to ``data/prune-journal.json`` first, then the rows are updated, then the files removed,
then the journal; a crash anywhere leaves a journal that the next ``prune`` (or
``doctor --repair``) finishes. In a bucket the files are objects, deleted in ``DeleteObjects``
batches; a refusal leaves the journal (the rows already forget those images) for the next run. Nothing a queued or running run, an unfinished prompt, or an
approval needs is ever pruned.

``checkpoint`` is called after every step (the tests make it fail at each one in turn).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.display import size
from pipeline.errors import InputError, PurgeFailed, RunStateError, StorageError
from pipeline.files import atomic_write_json
from pipeline.runs.projects import PROJECT_FILE, RUN_FILE, get_project, project_folder
from pipeline.runs.purge import purge, table
from pipeline.runs.records import get_run, output_dir_of, owner_alive
from pipeline.store.db import session
from pipeline.store.models import (
    DEFAULT_PROJECT,
    TERMINAL_ITEM_STATUSES,
    Iteration,
    Project,
    Prompt,
    Rating,
    Run,
    RunItem,
    Thumbnail,
    row_id,
    utcnow,
)
from pipeline.store.objects import delete_urls, in_bucket, run_store

log = logging.getLogger("pipeline.runs.retention")
Checkpoint = Callable[[str], None]
JOURNAL = "prune-journal.json"
BATCH = 2000  # images per prune batch: one journal, one transaction
UNLINK_THREADS = 16
BUSY_STATUSES = ("queued", "running")  # a run in these may read or write any of its files


def _nothing(_: str) -> None:
    pass


# ---- What a delete covers ----------------------------------------------------------------------
@dataclass
class Footprint:
    """What deleting some runs removes: for the confirmation, and what the command prints."""

    runs: list[int] = field(default_factory=list)
    images: int = 0
    files: int = 0
    bytes_on_disk: int = 0
    exports: list[Path] = field(default_factory=list)
    export_bytes: int = 0
    place: str = "on disk"  # or "in the bucket"

    def describe(self) -> str:
        return (f"{len(self.runs)} run(s), {self.images:,} image(s), {self.files:,} file(s) "
                f"({size(self.bytes_on_disk)} {self.place}), {len(self.exports)} export(s) ({size(self.export_bytes)})")


def walk_files(folder: Path) -> Iterator[os.DirEntry[str]]:
    """Every file below ``folder`` (symbolic links not followed; a folder that cannot be read is skipped)."""
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            else:
                yield entry


def tree_size(folder: Path) -> tuple[int, int]:
    """(files, bytes) below ``folder``; (0, 0) when it does not exist."""
    files = size = 0
    for entry in walk_files(folder):
        try:
            size += entry.stat(follow_symlinks=False).st_size
            files += 1
        except OSError:
            pass
    return files, size


MANIFEST_RUNS = re.compile(rb'^\{"runs": \[([0-9, ]*)\]')


def runs_in_export(zip_path: Path) -> set[int]:
    """The runs an export holds images of: from its ``manifest.json`` (which starts with them), else its name."""
    try:
        with zipfile.ZipFile(zip_path) as zf, zf.open("manifest.json") as f:
            match = MANIFEST_RUNS.match(f.read(65536))
        if match:
            return {int(x) for x in match.group(1).split(b",") if x.strip()}
    except (OSError, KeyError, zipfile.BadZipFile):
        pass
    name = zip_path.name.removeprefix("darkroom_run-").split("_", 1)[0]
    return {int(x) for x in name.split("-") if x.isdigit()} if zip_path.name.startswith("darkroom_run-") else set()


def exports_naming(settings: Settings, run_ids: Iterable[int]) -> list[Path]:
    """The dashboard's exports (``data/exports/*.zip``: runs and Gallery selections) holding images of any of ``run_ids``."""
    wanted = set(run_ids)
    zips = sorted(settings.exports_dir.glob("darkroom_*.zip")) if settings.exports_dir.is_dir() else []
    return [z for z in zips if wanted & runs_in_export(z)]


def footprint(s: Session, settings: Settings, run_ids: list[int]) -> Footprint:
    fp = Footprint(runs=sorted(run_ids))
    if run_ids:
        fp.images = int(s.exec(
            select(sa.func.count()).select_from(Iteration).join(RunItem, col(RunItem.id) == Iteration.run_item_id)
            .where(col(RunItem.run_id).in_(run_ids), Iteration.image_path != "")
        ).one())
    bucket = in_bucket(settings)
    if bucket:
        fp.place = "in the bucket"
    for run_id in run_ids:
        run = get_run(s, run_id)
        if bucket:  # one listing request per 1,000 objects
            listed = list(run_store(settings, run).listing(""))
            files, size = len(listed), sum(o.size for o in listed)
        else:
            files, size = tree_size(output_dir_of(settings, run))
        fp.files += files
        fp.bytes_on_disk += size
    fp.exports = exports_naming(settings, run_ids)
    fp.export_bytes = sum(p.stat().st_size for p in fp.exports if p.exists())
    return fp


def _check_deletable(run: Run) -> None:
    if run.status in BUSY_STATUSES and (run.status == "queued" or owner_alive(run)):
        raise RunStateError(f"run {run.id} is {run.status}; cancel it first (Runs page, or Ctrl-C in its terminal)")


def plan_run_delete(engine: Engine, settings: Settings, run_id: int) -> Footprint:
    with session(engine) as s:
        _check_deletable(get_run(s, run_id))
        return footprint(s, settings, [run_id])


def plan_project_delete(engine: Engine, settings: Settings, name: str) -> Footprint:
    with session(engine) as s:
        project = get_project(s, name)
        runs = list(s.exec(select(Run).where(Run.project_id == project.id)))
        for run in runs:
            if run.status != "deleting":
                _check_deletable(run)
        return footprint(s, settings, [row_id(r) for r in runs])


# ---- Delete -------------------------------------------------------------------------------------
def _remove_run_files(settings: Settings, run: Run, checkpoint: Checkpoint) -> None:
    """The run's folder: the whole of it inside the data folder; of a folder chosen with
    ``--output`` only what Darkroom wrote there (``results/``, ``run.json``)."""
    folder = output_dir_of(settings, run)
    results = folder / "results"
    if results.is_dir():
        for prompt_folder in sorted(results.iterdir()):
            if prompt_folder.is_dir():
                shutil.rmtree(prompt_folder, ignore_errors=False)
            else:
                prompt_folder.unlink(missing_ok=True)
            checkpoint(f"files:{prompt_folder.name}")
        results.rmdir()
    (folder / RUN_FILE).unlink(missing_ok=True)
    inside = folder.resolve().is_relative_to(settings.runs_dir.resolve())
    if folder.is_dir() and inside:
        shutil.rmtree(folder)
    elif folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    checkpoint("files")


def _delete_marked_run(engine: Engine, settings: Settings, run: Run, checkpoint: Checkpoint) -> None:
    run_id = row_id(run)
    if in_bucket(settings):  # first: a refusal here leaves everything else as it was
        removed, _ = run_store(settings, run).purge("")
        checkpoint("objects")
        log.info("run %s: %d object(s) deleted from the bucket", run_id, removed)
    for zip_path in exports_naming(settings, [run_id]):
        zip_path.unlink(missing_ok=True)
    checkpoint("exports")
    _remove_run_files(settings, run, checkpoint)
    with engine.begin() as conn:
        purge(conn, table("run"), sa.select(table("run").c.id).where(table("run").c.id == run_id))
    checkpoint("rows")
    log.info("run %s deleted", run_id)


def delete_run(engine: Engine, settings: Settings, run_id: int, checkpoint: Checkpoint = _nothing) -> Footprint:
    """Delete the run with its rows, images, thumbnails, sidecars and exports; return what went.
    Run it again after an interruption to finish (a run marked ``deleting`` goes on from there)."""
    with session(engine) as s:
        run = get_run(s, run_id)
        if run.status != "deleting":
            _check_deletable(run)
        gone = footprint(s, settings, [run_id])
        before = {run_id: run.status}
        run.status = "deleting"
        s.commit()
    checkpoint("marked")
    try:
        _delete_marked_run(engine, settings, run, checkpoint)
    except PurgeFailed as e:
        raise _delete_failed(engine, e, f"run {run_id}", before, deleted_runs=0) from None
    return gone


def _delete_failed(engine: Engine, e: PurgeFailed, what: str, before: dict[int, str], deleted_runs: int,
                   project: tuple[int, str] | None = None) -> StorageError:
    """The bucket refused a delete. Nothing gone yet: put the runs (and project) back as they were.
    Part-way: they stay marked ``deleting`` with their rows, and the message says so."""
    again = f"python -m pipeline delete {what}"
    if e.removed == 0 and deleted_runs == 0:
        with session(engine) as s:
            for run_id, status in before.items():
                s.execute(sa.update(Run).where(col(Run.id) == run_id, col(Run.status) == "deleting").values(status=status))
            if project is not None:
                s.execute(sa.update(Project).where(col(Project.id) == project[0], col(Project.status) == "deleting")
                          .values(status=project[1]))
            s.commit()
        return StorageError(f"{e}. Nothing was deleted: {what} is as it was.")
    return StorageError(f"{e}. {e.removed:,} object(s) were deleted before that"
                        + (f" (and {deleted_runs} run(s) entirely)" if deleted_runs else "")
                        + f"; {what} stays marked 'deleting' with its rows (`python -m pipeline doctor` reports it). "
                        f"Run `{again}` again once the bucket accepts deletes.")


def delete_project(engine: Engine, settings: Settings, name: str, checkpoint: Checkpoint = _nothing) -> Footprint:
    """Delete the project, every one of its runs (as :func:`delete_run`), and its folder."""
    with session(engine) as s:
        project = get_project(s, name)
        if project.name == DEFAULT_PROJECT:
            raise InputError("the default project cannot be deleted (delete its runs one by one)", field="project")
        runs = list(s.exec(select(Run).where(Run.project_id == project.id)))
        for run in runs:
            if run.status != "deleting":
                _check_deletable(run)
        gone = footprint(s, settings, [row_id(r) for r in runs])
        before = {row_id(r): r.status for r in runs}
        project_before = (row_id(project), project.status)
        project.status = "deleting"
        for run in runs:
            run.status = "deleting"
        s.commit()
    checkpoint("marked")
    for done, run in enumerate(runs):
        try:
            _delete_marked_run(engine, settings, run, checkpoint)
        except PurgeFailed as e:
            raise _delete_failed(engine, e, f"project {name!r}", before, deleted_runs=done, project=project_before) from None
    folder = project_folder(settings, project)
    (folder / PROJECT_FILE).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    checkpoint("folder")
    with engine.begin() as conn:
        purge(conn, table("project"), sa.select(table("project").c.id).where(table("project").c.id == project.id))
    checkpoint("project")
    return gone


def unfinished_deletes(engine: Engine) -> tuple[list[int], list[str]]:
    """Runs and projects whose delete was interrupted (marked ``deleting``)."""
    with session(engine) as s:
        runs = [r for r in s.exec(select(Run.id).where(Run.status == "deleting")).all() if r is not None]
        projects = list(s.exec(select(Project.name).where(Project.status == "deleting")).all())
    return runs, projects


def finish_deletes(engine: Engine, settings: Settings) -> list[str]:
    """Finish every interrupted delete; say what was finished."""
    runs, projects = unfinished_deletes(engine)
    done = []
    for name in projects:
        delete_project(engine, settings, name)
        done.append(f"project {name!r}")
    for run_id in runs:
        with session(engine) as s:
            if s.get(Run, run_id) is None:
                continue  # went with its project
        delete_run(engine, settings, run_id)
        done.append(f"run {run_id}")
    return done


# ---- Prune --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrunePolicy:
    """Which images go. Approved images, images of queued or running runs, and images of prompts
    still to be finished are kept whatever the policy."""

    older_than_days: float | None = None  # images older than this go unless approved
    keep_best: bool = False  # of each prompt, only its best iteration stays (and approved ones)
    drop_rejected: bool = False  # rejected images go (an image also approved by someone stays)
    project: str | None = None  # only this project's runs
    run_ids: tuple[int, ...] = ()  # only these runs

    def check(self) -> None:
        if self.older_than_days is not None and self.older_than_days < 0:
            raise InputError(f"{self.older_than_days} days cannot be negative", field="older_than")
        if self.older_than_days is None and not self.keep_best and not self.drop_rejected:
            raise InputError("choose at least one policy: --older-than DAYS, --keep-best or --drop-rejected", field="policy")

    def describe(self) -> str:
        parts = []
        if self.older_than_days is not None:
            parts.append(f"only approved images older than {self.older_than_days:g} day(s) stay")
        if self.keep_best:
            parts.append("each prompt keeps its best image")
        if self.drop_rejected:
            parts.append("rejected images go")
        return "; ".join(parts)


@dataclass(frozen=True)
class Doomed:
    """One image a prune removes."""

    iteration_id: int
    run_id: int
    prompt_key: str
    number: int
    path: str  # absolute, or the object's s3:// URL
    image_bytes: int
    why: str


@dataclass
class PruneResult:
    images: list[Doomed]
    thumbnail_bytes: int = 0
    finished_journal: int = 0  # images of an interrupted prune finished first

    @property
    def image_bytes(self) -> int:
        return sum(d.image_bytes for d in self.images)


def _protected_and_rejected(s: Session, iteration_ids: Any) -> tuple[set[int], set[int]]:
    rows = s.exec(select(Rating.iteration_id, Rating.decision)
                  .where(col(Rating.iteration_id).in_(iteration_ids), col(Rating.decision).in_(("approved", "rejected")))).all()
    approved = {i for i, d in rows if d == "approved"}
    return approved, {i for i, d in rows if d == "rejected"} - approved


def prune_candidates(s: Session, settings: Settings, policy: PrunePolicy, now: datetime | None = None) -> list[Doomed]:
    """The images ``policy`` removes (nothing is changed)."""
    policy.check()
    runs = select(Run).where(col(Run.status).not_in((*BUSY_STATUSES, "deleting")))
    if policy.project is not None:
        runs = runs.where(Run.project_id == get_project(s, policy.project).id)
    if policy.run_ids:
        runs = runs.where(col(Run.id).in_(policy.run_ids))
    chosen = list(s.exec(runs))
    folders = {row_id(r): output_dir_of(settings, r) for r in chosen}
    if not folders:
        return []
    stores = {row_id(r): run_store(settings, r) for r in chosen} if in_bucket(settings) else {}
    base = (sa.select(col(Iteration.id), col(RunItem.run_id), col(Prompt.key), col(Iteration.number), col(Iteration.image_path),
                      col(Iteration.byte_size), col(Iteration.finished_at), col(Iteration.started_at), col(RunItem.final_iteration))
            .join(RunItem, col(RunItem.id) == Iteration.run_item_id).join(Prompt, col(Prompt.id) == RunItem.prompt_id)
            .where(col(RunItem.run_id).in_(folders), col(RunItem.status).in_(TERMINAL_ITEM_STATUSES), col(Iteration.image_path) != ""))
    ids = base.with_only_columns(col(Iteration.id))
    approved, rejected = _protected_and_rejected(s, ids)
    cutoff = (now or utcnow()) - timedelta(days=policy.older_than_days) if policy.older_than_days is not None else None
    doomed = []
    for it_id, run_id, key, number, image_path, byte_size, finished, started, best in s.execute(base).all():
        if it_id in approved:
            continue
        when = finished or started
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=cutoff.tzinfo if cutoff else None)
        why = ("rejected" if policy.drop_rejected and it_id in rejected
               else "not its prompt's best" if policy.keep_best and best is not None and number != best
               else f"older than {policy.older_than_days:g} days" if cutoff is not None and when is not None and when < cutoff
               else "")
        if why:
            path = stores[run_id].where(image_path) if stores else str(folders[run_id] / image_path)
            doomed.append(Doomed(it_id, run_id, key, number, path, int(byte_size or 0), why))
    return doomed


def _journal(settings: Settings) -> Path:
    return settings.data_dir / JOURNAL


def _apply_batch(engine: Engine, settings: Settings, entries: list[tuple[int, str]], checkpoint: Checkpoint) -> int:
    """Rows first (image forgotten, thumbnail gone), then the files or objects; returns the thumbnail bytes freed.
    A bucket's refusal raises with the journal kept: the rows no longer point at the objects it still holds."""
    ids = [i for i, _ in entries]
    with session(engine) as s:
        thumb_bytes = int(s.exec(select(sa.func.coalesce(sa.func.sum(sa.func.length(Thumbnail.data)), 0))
                                 .where(col(Thumbnail.iteration_id).in_(ids))).one())
        s.execute(sa.delete(Thumbnail).where(col(Thumbnail.iteration_id).in_(ids)))
        s.execute(sa.update(Iteration).where(col(Iteration.id).in_(ids)).values(image_path=""))
        s.commit()
    checkpoint("rows")
    objects = [path for _, path in entries if path.startswith("s3://")]
    if objects:
        try:
            delete_urls(settings, objects)
        except PurgeFailed as e:
            raise StorageError(f"prune: {e}. {len(entries):,} image row(s) no longer point at their images; "
                               f"{len(objects) - e.removed:,} of their objects are still in the bucket, listed in "
                               f"{_journal(settings)}; `python -m pipeline prune` or `doctor --repair` deletes them "
                               "once the bucket accepts deletes") from None
        checkpoint("files")
        entries = [(i, path) for i, path in entries if not path.startswith("s3://")]
    # Unlinking waits on the disk (an inode read per file once they are out of the cache): several at once.
    with ThreadPoolExecutor(max_workers=UNLINK_THREADS) as pool:
        for start in range(0, len(entries), 500):
            list(pool.map(_unlink, [path for _, path in entries[start:start + 500]]))
            checkpoint("files")
    return thumb_bytes


def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def pending_prune(settings: Settings) -> list[tuple[int, str]]:
    """The images of a prune batch that was interrupted ([] when none)."""
    path = _journal(settings)
    if not path.is_file():
        return []
    try:
        return [(int(i), str(p)) for i, p in json.loads(path.read_text(encoding="utf-8"))["images"]]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path} is damaged ({e}); move it aside and run `python -m pipeline doctor`", field="journal") from None


def finish_prune(engine: Engine, settings: Settings, checkpoint: Checkpoint = _nothing) -> int:
    """Finish an interrupted prune batch; the number of images it covered."""
    entries = pending_prune(settings)
    if entries:
        _apply_batch(engine, settings, entries, checkpoint)
    _journal(settings).unlink(missing_ok=True)
    return len(entries)


def prune(engine: Engine, settings: Settings, policy: PrunePolicy, *, dry_run: bool = False,
          checkpoint: Checkpoint = _nothing, now: datetime | None = None) -> PruneResult:
    """Remove the images ``policy`` selects (``dry_run``: only list them)."""
    finished = 0 if dry_run else finish_prune(engine, settings, checkpoint)
    with session(engine) as s:
        doomed = prune_candidates(s, settings, policy, now)
        if dry_run:
            ids = [d.iteration_id for d in doomed]
            thumbs = sum(int(s.exec(select(sa.func.coalesce(sa.func.sum(sa.func.length(Thumbnail.data)), 0))
                                    .where(col(Thumbnail.iteration_id).in_(ids[i:i + BATCH]))).one())
                         for i in range(0, len(ids), BATCH))
            return PruneResult(doomed, thumbs)
    result = PruneResult(doomed, finished_journal=finished)
    for start in range(0, len(doomed), BATCH):
        entries = [(d.iteration_id, d.path) for d in doomed[start:start + BATCH]]
        atomic_write_json(_journal(settings), {"started_at": utcnow().isoformat(), "policy": policy.describe(), "images": entries},
                          durable=True)
        checkpoint("journal")
        result.thumbnail_bytes += _apply_batch(engine, settings, entries, checkpoint)
        _journal(settings).unlink()
        checkpoint("done")
    if doomed:
        log.info("pruned %d image(s) (%s)", len(doomed), policy.describe())
    return result
