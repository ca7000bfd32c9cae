"""Zip export of a run's images with a manifest; the CLI and the dashboard share this builder.

The zip holds each image's original bytes, stored (not deflated: images are compressed
already), in one folder per prompt id (under ``run_<id>/`` when several runs are exported),
plus ``manifest.csv`` and ``manifest.json``. It is written through
``files.atomic_file`` (a temporary file beside the destination, renamed into place), so a
failed export leaves nothing behind. Files are
streamed from disk in chunks, so memory stays flat however large the export.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from .config import Settings
from .errors import ExportError
from .files import atomic_file
from .models import Evaluation, Iteration, Prompt, Rating, RunItem, utcnow
from .runs import get_run, output_dir_of

MANIFEST_FIELDS = [
    "run_id", "prompt_id", "title", "scene", "mood", "final_prompt", "iteration", "file", "provider", "model", "seed",
    "judge_score", "stars", "decision", "reviewer", "note", "cost_usd", "sha256",
]


SELECTIONS = {
    "approved": "approved images (latest decision)",
    "best": "each prompt's best-scoring iteration",
    "all": "every generated image",
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    images: int
    bytes_written: int


def latest_ratings(s: Session, iteration_ids: list[int]) -> dict[int, Rating]:
    """The most recent rating of each iteration, whoever gave it (that decision is the one in force)."""
    if not iteration_ids:
        return {}
    newest = (
        select(Rating.iteration_id, func.max(Rating.rated_at).label("at"))
        .where(col(Rating.iteration_id).in_(iteration_ids)).group_by(Rating.iteration_id).subquery()
    )
    rows = s.exec(select(Rating).join(newest, (Rating.iteration_id == newest.c.iteration_id) & (Rating.rated_at == newest.c.at))).all()
    return {r.iteration_id: r for r in rows}


def manifest_rows(s: Session, settings: Settings, run_ids: list[int], *, selection: str = "approved") -> list[dict[str, Any]]:
    """One row per image to export; ``selection`` is a key of :data:`SELECTIONS`."""
    if selection not in SELECTIONS:
        raise ExportError(f"selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    if not run_ids:
        raise ExportError("choose at least one run to export")
    runs = {rid: get_run(s, rid) for rid in run_ids}
    rows = s.exec(
        select(Iteration, RunItem, Prompt, Evaluation)
        .join(RunItem, RunItem.id == Iteration.run_item_id)
        .join(Prompt, Prompt.id == RunItem.prompt_id)
        .join(Evaluation, Evaluation.iteration_id == Iteration.id, isouter=True)
        .where(col(RunItem.run_id).in_(run_ids), Iteration.status == "ok")
        .order_by(RunItem.run_id, Prompt.position, Iteration.number)
    ).all()
    ratings = latest_ratings(s, [it.id for it, *_ in rows])
    prefix_runs = len(run_ids) > 1
    out = []
    for it, item, prompt, ev in rows:
        rating = ratings.get(it.id)
        if selection == "approved" and (rating is None or rating.decision != "approved"):
            continue
        if selection == "best" and it.number != item.final_iteration:
            continue
        folder = f"run_{item.run_id}/{prompt.key}" if prefix_runs else prompt.key
        out.append({
            "run_id": item.run_id, "prompt_id": prompt.key, "title": prompt.title, "scene": prompt.scene, "mood": prompt.mood,
            "final_prompt": it.prompt_text, "iteration": it.number, "file": f"{folder}/{Path(it.image_path).name}",
            "provider": it.provider, "model": it.model, "seed": it.seed,
            "judge_score": ev.overall_score if ev else None, "stars": rating.stars if rating else None,
            "decision": rating.decision if rating else "none", "reviewer": rating.reviewer if rating else "",
            "note": rating.note if rating else "", "cost_usd": it.cost_usd, "sha256": it.sha256,
            "_source": output_dir_of(settings, runs[item.run_id]) / it.image_path,
        })
    return out


def build_zip(s: Session, settings: Settings, run_ids: list[int], dest: Path, *, selection: str = "approved") -> ExportResult:
    rows = manifest_rows(s, settings, run_ids, selection=selection)
    runs_text = ", ".join(str(r) for r in run_ids)
    if not rows:
        what = {"approved": "approved images", "best": "scored images", "all": "generated images"}[selection]
        raise ExportError(f"run{'s' if len(run_ids) > 1 else ''} {runs_text} {'have' if len(run_ids) > 1 else 'has'} "
                          f"no {what} to export; nothing was written")
    missing = [str(r["_source"]) for r in rows if not r["_source"].is_file()]
    if missing:
        listed = "\n  ".join(missing[:10]) + (f"\n  … and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ExportError(f"{len(missing)} image file(s) recorded in the database are missing on disk:\n  {listed}")
    dest = dest.resolve()
    with atomic_file(dest) as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            zf.write(row["_source"], row["file"], compress_type=zipfile.ZIP_STORED)
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(public)
        zf.writestr("manifest.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("manifest.json", json.dumps({"runs": run_ids, "selection": selection, "images": public},
                                                indent=2, ensure_ascii=False), compress_type=zipfile.ZIP_DEFLATED)
    return ExportResult(path=dest, images=len(rows), bytes_written=dest.stat().st_size)


def export_path(settings: Settings, run_ids: list[int], selection: str) -> Path:
    """Where the dashboard writes an export: ``data/exports/darkroom_run-1-2_approved_<time>.zip``."""
    stamp = utcnow().strftime("%Y%m%d_%H%M%S_%f")
    return settings.exports_dir / f"darkroom_run-{'-'.join(str(r) for r in sorted(run_ids))}_{selection}_{stamp}.zip"
