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
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import ExportError
from pipeline.files import atomic_file
from pipeline.review.ratings import latest_ratings_query
from pipeline.runs.records import get_run, output_dir_of
from pipeline.store.models import Evaluation, Iteration, Prompt, RunItem, utcnow

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


def manifest_rows(s: Session, settings: Settings, run_ids: list[int], *, selection: str = "approved") -> list[dict[str, Any]]:
    """One row per image to export; ``selection`` is a key of :data:`SELECTIONS`."""
    if selection not in SELECTIONS:
        raise ExportError(f"selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    if not run_ids:
        raise ExportError("choose at least one run to export")
    folders = {rid: output_dir_of(settings, get_run(s, rid)) for rid in run_ids}
    latest = latest_ratings_query()
    q = (
        select(RunItem.run_id, Prompt.key, Prompt.title, Prompt.scene, Prompt.mood, Iteration.prompt_text, Iteration.number,
               Iteration.image_path, Iteration.provider, Iteration.model, Iteration.seed, Evaluation.overall_score, latest.c.stars,
               func.coalesce(latest.c.decision, "none"), func.coalesce(latest.c.reviewer, ""), func.coalesce(latest.c.note, ""),
               Iteration.cost_usd, Iteration.sha256)
        .select_from(Iteration)
        .join(RunItem, RunItem.id == Iteration.run_item_id)
        .join(Prompt, Prompt.id == RunItem.prompt_id)
        .join(Evaluation, Evaluation.iteration_id == Iteration.id, isouter=True)
        .join(latest, latest.c.iteration_id == Iteration.id, isouter=True)
        .where(col(RunItem.run_id).in_(run_ids), Iteration.status == "ok")
        .order_by(RunItem.run_id, Prompt.position, Iteration.number)
    )
    if selection == "approved":
        q = q.where(latest.c.decision == "approved")
    elif selection == "best":
        q = q.where(Iteration.number == RunItem.final_iteration)
    prefix_runs = len(run_ids) > 1
    out = []
    for (run_id, key, title, scene, mood, text, number, image_path, provider, model, seed, score, stars, decision, reviewer, note,
         cost, sha) in s.exec(q).all():
        folder = f"run_{run_id}/{key}" if prefix_runs else key
        out.append({
            "run_id": run_id, "prompt_id": key, "title": title, "scene": scene, "mood": mood, "final_prompt": text,
            "iteration": number, "file": f"{folder}/{PurePosixPath(image_path).name}", "provider": provider, "model": model,
            "seed": seed, "judge_score": score, "stars": stars, "decision": decision, "reviewer": reviewer, "note": note,
            "cost_usd": cost, "sha256": sha, "_source": folders[run_id] / image_path,
        })
    return out


def manifest_json(run_ids: list[int], selection: str, images: list[dict[str, Any]]) -> str:
    """One image per line: readable, and written by the C encoder (``indent=`` would use the slow Python one)."""
    lines = ",\n".join("    " + json.dumps(row, ensure_ascii=False) for row in images)
    return f'{{"runs": {json.dumps(run_ids)}, "selection": {json.dumps(selection)},\n "images": [\n{lines}\n]}}\n'


COPY_CHUNK = 1 << 20  # zipfile.write copies in 8 KiB pieces; 1 MiB keeps pace with `zip -0`


def _add_stored(zf: zipfile.ZipFile, source: Path, name: str) -> None:
    """Add a file uncompressed, streamed from disk (never whole in memory)."""
    info = zipfile.ZipInfo.from_file(source, name)
    info.compress_type = zipfile.ZIP_STORED
    with open(source, "rb") as src, zf.open(info, "w") as dest:
        shutil.copyfileobj(src, dest, COPY_CHUNK)


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
            _add_stored(zf, row["_source"], row["file"])
        public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(public)
        zf.writestr("manifest.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("manifest.json", manifest_json(run_ids, selection, public), compress_type=zipfile.ZIP_DEFLATED)
    return ExportResult(path=dest, images=len(rows), bytes_written=dest.stat().st_size)


def export_path(settings: Settings, run_ids: list[int], selection: str) -> Path:
    """Where the dashboard writes an export: ``data/exports/darkroom_run-1-2_approved_<time>.zip``."""
    stamp = utcnow().strftime("%Y%m%d_%H%M%S_%f")
    return settings.exports_dir / f"darkroom_run-{'-'.join(str(r) for r in sorted(run_ids))}_{selection}_{stamp}.zip"
