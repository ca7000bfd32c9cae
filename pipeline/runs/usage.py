"""Storage figures per project, run and provider: ``python -m pipeline du`` and the Storage page.

- images: iterations that still have their image (pruned ones do not count);
- bytes on disk: every file in the run's folder (images, sidecars, ``run.json``), as ``ls`` sizes, or
  every object under the run's place in the bucket (``DARKROOM_STORAGE_URL``);
  per provider, the bytes of its image files;
- bytes in the database: its thumbnails exactly, plus the rest of the database file shared out
  by the number of iterations (the rows of a run are small and alike; SQLite only);
- growth per day: over the last ``days`` days, image bytes plus thumbnail bytes made per day.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from pipeline.config import Settings
from pipeline.runs.records import output_dir_of
from pipeline.runs.retention import tree_size
from pipeline.store.db import session, sqlite_path
from pipeline.store.models import Iteration, Project, Run, RunItem, Thumbnail, row_id, utcnow
from pipeline.store.objects import run_store

GROWTH_DAYS = 7


@dataclass
class Usage:
    name: str
    images: int = 0
    disk_bytes: int = 0
    db_bytes: int = 0
    bytes_per_day: float = 0.0  # over the last GROWTH_DAYS days
    iterations: int = 0  # rows, pruned or not (they share the database's rest)
    thumbnail_bytes: int = 0

    def add(self, other: "Usage") -> None:
        self.images += other.images
        self.disk_bytes += other.disk_bytes
        self.db_bytes += other.db_bytes
        self.bytes_per_day += other.bytes_per_day
        self.iterations += other.iterations
        self.thumbnail_bytes += other.thumbnail_bytes


@dataclass
class StorageReport:
    projects: list[Usage] = field(default_factory=list)
    runs: list[Usage] = field(default_factory=list)
    providers: list[Usage] = field(default_factory=list)
    database_bytes: int | None = None  # the database file (and its write-ahead log), SQLite only
    total: Usage = field(default_factory=lambda: Usage("total"))

    def as_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


def database_bytes(settings: Settings) -> int | None:
    path = sqlite_path(settings.database_url)
    if path is None:
        return None
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def storage_report(engine: Engine, settings: Settings, *, project: str | None = None, now: datetime | None = None,
                   days: int = GROWTH_DAYS) -> StorageReport:
    """The figures (``project``: only that project's runs, but the database's rest is shared as for all)."""
    since = (now or utcnow()) - timedelta(days=days)
    report = StorageReport(database_bytes=database_bytes(settings))
    with session(engine) as s:
        projects = {row_id(p): p.name for p in s.exec(select(Project))}
        runs = list(s.exec(select(Run).order_by(col(Run.id))))
        thumb_len = sa.func.coalesce(sa.func.length(Thumbnail.data), 0)
        has_image, recent = col(Iteration.image_path) != "", sa.func.coalesce(col(Iteration.finished_at) > since, False)
        rows = s.execute(
            sa.select(col(RunItem.run_id), col(Iteration.provider), has_image, recent,
                      sa.func.count(), sa.func.coalesce(sa.func.sum(col(Iteration.byte_size)), 0), sa.func.sum(thumb_len))
            .join(RunItem, col(RunItem.id) == Iteration.run_item_id)
            .join(Thumbnail, col(Thumbnail.iteration_id) == Iteration.id, isouter=True)
            .group_by(col(RunItem.run_id), col(Iteration.provider), has_image, recent)
        ).all()
    by_run: dict[int, Usage] = {row_id(r): Usage(f"run {r.id} · {r.name}") for r in runs}
    by_provider: dict[str, Usage] = defaultdict(lambda: Usage(""))
    for run_id, provider, has_image, recent, n, image_bytes, thumb_bytes in rows:
        usage, per_provider = by_run[run_id], by_provider[provider or "(none)"]
        per_provider.name = provider or "(none)"
        for u in (usage, per_provider):
            u.iterations += n
            u.thumbnail_bytes += int(thumb_bytes or 0)
            if has_image:
                u.images += n
            if recent:
                u.bytes_per_day += (int(image_bytes or 0) + int(thumb_bytes or 0)) / days
        if has_image:
            per_provider.disk_bytes += int(image_bytes or 0)
    total_iterations = sum(u.iterations for u in by_run.values())
    total_thumbs = sum(u.thumbnail_bytes for u in by_run.values())
    rest = max(0, (report.database_bytes or total_thumbs) - total_thumbs)
    for u in (*by_run.values(), *by_provider.values()):
        u.db_bytes = u.thumbnail_bytes + (round(rest * u.iterations / total_iterations) if total_iterations else 0)
    by_project: dict[int | None, Usage] = {}
    wanted = None if project is None else next((pid for pid, name in projects.items() if name == project), -1)
    for run in runs:
        if wanted is not None and run.project_id != wanted:
            continue
        usage = by_run[row_id(run)]
        usage.disk_bytes = (sum(o.size for o in run_store(settings, run).listing()) if settings.storage_url  # in the bucket
                            else tree_size(output_dir_of(settings, run))[1])
        report.runs.append(usage)
        group = by_project.setdefault(run.project_id, Usage(projects.get(run.project_id or -1, "(no project)")))
        group.add(usage)
        report.total.add(usage)
    report.projects = sorted(by_project.values(), key=lambda u: u.name)
    report.providers = sorted(by_provider.values(), key=lambda u: u.name) if wanted is None else []
    return report
