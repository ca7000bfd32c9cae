"""Do the database and the disk agree? ``python -m pipeline doctor [--repair]``.

Finds, and with ``repair`` fixes where it can:

- ``missing``: an image a row points at is not on disk (repair: the row forgets the image and its
  thumbnail, the record of the generation stays);
- ``unknown``: an image file, or a whole run folder, no row knows (repair: moved to
  ``data/orphans/`` keeping its path, never deleted);
- ``hash``: an image whose bytes no longer match the SHA-256 recorded when it was made (cannot be
  repaired: the file was changed; restore it from a copy);
- ``temp``: a temporary file a crash left (repair: removed);
- ``unfinished``: a delete or a prune that was interrupted (repair: finished).

Folders of queued or running runs are skipped (their files are being written).

With images in a bucket (``DARKROOM_STORAGE_URL``) the same questions are asked of the bucket:
one listing of the storage prefix (a request per 1,000 objects) says which image rows' objects are
``missing`` and which objects no row or run knows (``unknown``: grouped per run folder no run knows;
repair moves them under ``orphans/`` in the same bucket, a server-side copy, never a delete). The
``hash`` check HEADs each image ([storage] ``upload_workers`` at once, each bounded by the
[storage] timeouts) and compares the SHA-256 recorded on the object when it was uploaded (and
checked by the server then) with the row's. A bucket has no temporary objects: a PUT is whole or
absent.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from pipeline.config import Settings
from pipeline.files import TEMP_PREFIX
from pipeline.runs.projects import PROJECT_FILE
from pipeline.runs.records import output_dir_of
from pipeline.runs.retention import (
    BUSY_STATUSES,
    JOURNAL,
    finish_deletes,
    finish_prune,
    pending_prune,
    unfinished_deletes,
    walk_files,
)
from pipeline.store.db import session
from pipeline.store.models import Iteration, Project, Run, RunItem, Thumbnail, row_id
from pipeline.store.objects import ObjectStore, StorageOptions, in_bucket, parse_bucket_url, run_key_root, storage_root

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif", ".bmp", ".tif", ".tiff"})
ORPHANS = "orphans"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Finding:
    kind: str  # missing | unknown | hash | temp | unfinished
    path: str
    detail: str
    iteration_id: int | None = None

    @property
    def repairable(self) -> bool:
        return self.kind != "hash"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def examine(engine: Engine, settings: Settings, *, hashes: bool = True) -> list[Finding]:
    """Every disagreement between the database and the disk or bucket (nothing is changed)."""
    findings: list[Finding] = []
    runs_deleting, projects_deleting = unfinished_deletes(engine)
    for run_id in runs_deleting:
        findings.append(Finding("unfinished", f"run {run_id}", "its delete was interrupted; finish it with "
                                f"`python -m pipeline delete run {run_id}` or `doctor --repair`"))
    for name in projects_deleting:
        findings.append(Finding("unfinished", f"project {name}", "its delete was interrupted; finish it with "
                                f"`python -m pipeline delete project {name!r}` or `doctor --repair`"))
    pending = pending_prune(settings)
    journaled = {p for _, p in pending}
    if pending:
        findings.append(Finding("unfinished", str(settings.data_dir / JOURNAL),
                                f"a prune of {len(pending)} image(s) was interrupted; `prune` or `doctor --repair` finishes it"))
    with session(engine) as s:
        runs = list(s.exec(select(Run)))
        folders = {row_id(r): output_dir_of(settings, r) for r in runs}
        busy = {row_id(r) for r in runs if r.status in BUSY_STATUSES or r.status == "deleting"}
        rows = s.exec(select(Iteration.id, RunItem.run_id, Iteration.image_path, Iteration.sha256)
                      .join(RunItem, col(RunItem.id) == Iteration.run_item_id).where(Iteration.image_path != "")).all()
        project_slugs = {p.slug for p in s.exec(select(Project))}
    if in_bucket(settings):  # the run folders are in the bucket: nothing of theirs to look for on disk
        findings += _examine_bucket(settings, runs, busy, rows, journaled, hashes)
    else:
        findings += _examine_disk(settings, folders, busy, rows, journaled, project_slugs, hashes)
    for folder in (settings.exports_dir, settings.data_dir):
        if folder.is_dir():
            findings += [Finding("temp", str(p), "a temporary file left by an interrupted write")
                         for p in folder.iterdir() if p.is_file() and p.name.startswith(TEMP_PREFIX)]
    return findings


def _examine_disk(settings: Settings, folders: dict[int, Path], busy: set[int], rows: Sequence[tuple[int | None, int, str, str]],
                  journaled: set[str], project_slugs: set[str], hashes: bool) -> list[Finding]:
    findings: list[Finding] = []
    known: set[Path] = set()
    for it_id, run_id, image_path, sha in rows:
        path = (folders[run_id] / image_path).resolve()
        known.add(path)
        if run_id in busy or str(folders[run_id] / image_path) in journaled:
            continue
        if not path.is_file():
            findings.append(Finding("missing", str(path), f"run {run_id}: the image of iteration row {it_id} is not on disk", it_id))
        elif hashes and sha and sha256_of(path) != sha:
            findings.append(Finding("hash", str(path), f"run {run_id}: the file's SHA-256 is not the one recorded when it was "
                                    "made; it was changed or damaged (restore it from a copy)", it_id))
    run_folders = {f.resolve() for f in folders.values()}
    busy_folders = {folders[r].resolve() for r in busy}
    roots = [settings.runs_dir] + [f for f in folders.values() if not f.resolve().is_relative_to(settings.runs_dir.resolve())]
    for root in roots:
        for folder in _top_folders(root, run_folders, project_slugs, settings):
            if folder in busy_folders:
                continue
            if folder not in run_folders:
                findings.append(Finding("unknown", str(folder), "a folder no run of this database knows"))
                continue
            for path in (Path(entry.path) for entry in walk_files(folder)):
                if path.name.startswith(TEMP_PREFIX):
                    findings.append(Finding("temp", str(path), "a temporary file left by an interrupted write"))
                elif path.suffix.lower() in IMAGE_SUFFIXES and path.resolve() not in known and str(path) not in journaled:
                    findings.append(Finding("unknown", str(path), "an image no row points at"))
    return findings


def _run_of(key: str, roots: dict[str, int]) -> str | None:
    """The run folder (``runs/<id>``, ``runs/<project>/<id>``) an object's key lies in, if any run's."""
    parts = key.split("/")
    for n in range(1, len(parts)):
        if (folder := "/".join(parts[:n])) in roots:
            return folder
    return None


def _examine_bucket(settings: Settings, runs: list[Run], busy: set[int], rows: Sequence[tuple[int | None, int, str, str]],
                    journaled: set[str], hashes: bool) -> list[Finding]:
    root = storage_root(settings)
    roots = {run_key_root(r): row_id(r) for r in runs}
    by_run = {row_id(r): run_key_root(r) for r in runs}
    objects = {o.key: o for o in root.listing("") if not o.key.startswith(f"{ORPHANS}/")}
    findings: list[Finding] = []
    known: set[str] = set()
    to_check: list[tuple[int, int, str, str]] = []
    for it_id, run_id, image_path, sha in rows:
        key = f"{by_run[run_id]}/{PurePosixPath(image_path).as_posix()}"
        known.add(key)
        if run_id in busy or root.where(key) in journaled or it_id is None:
            continue
        if key not in objects:
            findings.append(Finding("missing", root.where(key), f"run {run_id}: the image of iteration row {it_id} "
                                    "is not in the bucket", it_id))
        elif hashes and sha:
            to_check.append((it_id, run_id, key, sha))
    if to_check:
        workers = max(1, StorageOptions.of(settings).upload_workers)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            infos = list(pool.map(lambda c: root.info(c[2]), to_check))
        for (it_id, run_id, key, sha), info in zip(to_check, infos, strict=True):
            if info is None:
                findings.append(Finding("missing", root.where(key), f"run {run_id}: the image of iteration row {it_id} "
                                        "is not in the bucket", it_id))
            elif info.sha256 and info.sha256 != sha:
                findings.append(Finding("hash", root.where(key), f"run {run_id}: the object's SHA-256 is not the one "
                                        "recorded when it was made; it was replaced or damaged (restore it from a copy)", it_id))
    strangers: dict[str, int] = {}  # a folder no run knows -> its objects
    busy_roots = {by_run[r] for r in busy}
    for key in sorted(objects):
        folder = _run_of(key, roots)
        if folder is None:
            parent = key.split("/results/", 1)[0] if "/results/" in key else str(PurePosixPath(key).parent)
            if PurePosixPath(key).name != PROJECT_FILE:
                strangers[parent] = strangers.get(parent, 0) + 1
        elif (folder not in busy_roots and PurePosixPath(key).suffix.lower() in IMAGE_SUFFIXES and key not in known
              and root.where(key) not in journaled):
            findings.append(Finding("unknown", root.where(key), "an image no row points at"))
    for folder, count in strangers.items():
        if folder in ("", "."):  # objects at the top of the storage prefix: named one by one
            findings += [Finding("unknown", root.where(k), "an object outside every run's folder")
                         for k in objects if "/" not in k]
        else:
            findings.append(Finding("unknown", root.where(folder) + "/", f"{count} object(s) in a folder no run of this database knows"))
    return findings


def _move_to_orphans(settings: Settings, root: ObjectStore, url: str) -> str:
    """Move an object (or every object under a ``…/`` folder) of the bucket under ``orphans/``."""
    base = str(parse_bucket_url(settings.storage_url))
    key = url[len(base) + 1:]
    keys = [o.key for o in root.listing(key)] if key.endswith("/") else [key]
    for k in keys:
        root.move(k, f"{ORPHANS}/{k}")
    return f"moved {url} ({len(keys)} object(s)) to {base}/{ORPHANS}/{key}"


def _top_folders(root: Path, run_folders: set[Path], project_slugs: set[str], settings: Settings) -> list[Path]:
    """The run folders below ``root`` (``<id>`` or ``<project>/<id>``), and any other folder found there."""
    if not root.is_dir():
        return []
    if root.resolve() in run_folders:
        return [root.resolve()]
    found = []
    for entry in sorted(root.iterdir()):
        resolved = entry.resolve()
        if not entry.is_dir() or resolved in run_folders:
            found += [resolved] if entry.is_dir() else []
            continue
        if root == settings.runs_dir and (entry.name in project_slugs or (entry / PROJECT_FILE).is_file()):
            found += [p.resolve() for p in sorted(entry.iterdir()) if p.is_dir()]
        else:
            found.append(resolved)
    return found


def repair(engine: Engine, settings: Settings, findings: list[Finding]) -> list[str]:
    """Fix what can be fixed; say what was done. Hash mismatches are left (and stay reported)."""
    done: list[str] = []
    if any(f.kind == "unfinished" for f in findings):
        finished = finish_prune(engine, settings)
        if finished:
            done.append(f"finished an interrupted prune of {finished} image(s)")
        done += [f"finished deleting {what}" for what in finish_deletes(engine, settings)]
    missing = [f.iteration_id for f in findings if f.kind == "missing" and f.iteration_id is not None]
    if missing:
        with session(engine) as s:
            for it in s.exec(select(Iteration).where(col(Iteration.id).in_(missing))):
                it.image_path = ""
                thumb = s.get(Thumbnail, it.id)
                if thumb is not None:
                    s.delete(thumb)
            s.commit()
        done.append(f"{len(missing)} row(s) no longer point at a missing image")
    orphans = settings.data_dir / ORPHANS
    for f in findings:
        if f.kind == "unknown" and f.path.startswith("s3://"):
            done.append(_move_to_orphans(settings, storage_root(settings), f.path))
            continue
        path = Path(f.path)
        if f.kind == "temp":
            path.unlink(missing_ok=True)
            done.append(f"removed {path}")
        elif f.kind == "unknown" and path.exists():
            try:
                relative = path.relative_to(settings.data_dir)
            except ValueError:
                relative = Path(*path.parts[1:])
            target = orphans / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
            done.append(f"moved {path} to {target}")
    return done
