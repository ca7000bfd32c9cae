"""Zip export of a run's images with a manifest; the CLI and the dashboard share this builder.

The zip holds each image's original bytes, stored (not deflated: images are compressed
already), in one folder per prompt id (under ``run_<id>/`` when several runs are exported),
plus ``manifest.csv`` and ``manifest.json``. ``manifest.json`` holds every value exactly; in
``manifest.csv``, which people open in a spreadsheet, a text cell that a spreadsheet would read
as a formula is neutralised (see :func:`csv_safe`). It is written through
``files.atomic_file`` (a temporary file beside the destination, renamed into place), so a
failed export leaves nothing behind. Files are
streamed from disk (or, with DARKROOM_STORAGE_URL, from the bucket) in chunks, so memory stays flat
however large the export. :mod:`pipeline.review.bucket_export` sends the same files to a bucket prefix.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from json import encoder as json_encoder
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy
from sqlalchemy import or_
from sqlmodel import Session, col

from pipeline.config import Settings
from pipeline.errors import ExportError, StorageError
from pipeline.files import atomic_file
from pipeline.review.decisions import review_config
from pipeline.review.gallery import NEWEST, GalleryFilter, Sort, filtered_query, sort_order
from pipeline.runs.records import get_run, output_dir_of
from pipeline.store.models import Evaluation, Iteration, Prompt, Rating, RunItem, utcnow
from pipeline.store.objects import ObjectStore, run_store

MANIFEST_FIELDS = [
    "run_id", "prompt_id", "title", "scene", "mood", "final_prompt", "iteration", "file", "provider", "model", "seed",
    "judge_score", "stars", "star_count", "decision", "decision_rule", "needs_tiebreak", "reviewer", "note", "cost_usd", "sha256",
    "image_id", "operation", "parent_ids", "cell_index",  # lineage: what made the image, from which images (their image_id)
]  # then, per reviewer, "<name>: stars", "<name>: decision", "<name>: note" (manifest.json: "ratings" by name)
RATING_PARTS = ("stars", "decision", "note")
RATING_COLUMNS = [col(Rating.id), col(Rating.iteration_id), col(Rating.reviewer), col(Rating.stars), col(Rating.decision),
                  col(Rating.note), col(Rating.rated_at), col(Rating.decided_at)]


SELECTIONS = {
    "approved": "approved images (decision in force)",
    "best": "each prompt's best-scoring iteration",
    "all": "every generated image",
}


@dataclass(frozen=True)
class ExportChoice:
    """What an export holds: which runs, which images. A built zip is offered only for its own choice."""

    run_ids: tuple[int, ...]
    selection: str

    @classmethod
    def of(cls, run_ids: list[int] | tuple[int, ...], selection: str) -> "ExportChoice":
        return cls(tuple(sorted(set(run_ids))), selection)

    def describe(self, run_names: dict[int, str]) -> str:
        """``run 3 (Night set), run 4 (Day set): approved images (latest decision)``: plain text."""
        runs = ", ".join(f"run {i} ({run_names[i]})" if i in run_names else f"run {i}" for i in self.run_ids)
        return f"{runs}: {SELECTIONS.get(self.selection, self.selection)}"


@dataclass(frozen=True)
class BuiltZip:
    """A zip written for ``choice``; the page keeps it between reruns."""

    choice: ExportChoice
    path: Path
    images: int
    bytes_written: int

    def offered_for(self, choice: ExportChoice) -> bool:
        """Download only the zip of the choice on screen, and only while its file exists."""
        return self.choice == choice and self.path.is_file()


@dataclass(frozen=True)
class ExportResult:
    path: Path
    images: int
    bytes_written: int


def _fmt_stars(mean: Any) -> float | int | None:
    """Mean stars as a spreadsheet reads them best: 5, 3.5, 4.33."""
    if mean is None:
        return None
    value = round(float(mean), 2)
    return int(value) if value.is_integer() else value


def _in_force_by(ratings: list[Any], decision: str, rule: str) -> list[Any]:
    """Whose decision the one in force is: the latest decider, or every reviewer on the winning side."""
    side = [r for r in ratings if r.decision == decision and decision != "none"]
    if rule == "latest" and side:
        return [max(side, key=lambda r: (r.decided_at is not None, r.decided_at or r.rated_at, r.id))]
    return side


def _collect(s: Session, settings: Settings, f: GalleryFilter, *, sort: Sort, reviewer: str, rule: str,
             disputed_star_spread: int = 2, prefix_runs: bool | None = None) -> list[dict[str, Any]]:
    """Manifest rows for exactly the images the gallery shows for ``f``, in its order (two queries)."""
    opts: dict[str, Any] = {"reviewer": reviewer, "rule": rule, "disputed_star_spread": disputed_star_spread}
    q, p = filtered_query(f, lambda p: [
        RunItem.run_id, Prompt.key, Prompt.title, Prompt.scene, Prompt.mood, Iteration.prompt_text, Iteration.number,
        Iteration.image_path, Iteration.provider, Iteration.model, Iteration.seed, Evaluation.overall_score,
        p.consensus.c.mean_stars, p.consensus.c.star_count, p.decision, p.consensus.c.needs_tiebreak,
        Iteration.cost_usd, Iteration.sha256, Iteration.id, Iteration.operation, Iteration.parent_ids, Iteration.cell_index,
    ], delta=sort.key == "delta", **opts)
    conn = s.connection()  # Core rows of the columns read: no ORM loading step for rows that are only read
    found = conn.execute(q.order_by(*sort_order(sort, p))).all()
    ids_q, _ = filtered_query(f, lambda p: [Iteration.id], delta=False, ratings=False, **opts)
    said = or_(col(Rating.stars).is_not(None), col(Rating.decision) != "none", col(Rating.note) != "")
    ratings: dict[int, list[Any]] = {}
    for r in conn.execute(sqlalchemy.select(*RATING_COLUMNS).where(col(Rating.iteration_id).in_(ids_q), said).order_by(col(Rating.reviewer))).all():
        ratings.setdefault(r.iteration_id, []).append(r)
    run_ids = sorted({row[0] for row in found})
    folders = {rid: output_dir_of(settings, get_run(s, rid)) for rid in run_ids}
    stores = {rid: run_store(settings, get_run(s, rid), folders[rid]) for rid in run_ids}  # the folder or the bucket
    if prefix_runs is None:  # one folder per run when several appear, so equal prompt ids never collide
        prefix_runs = len(run_ids) > 1
    out = []
    for (run_id, key, title, scene, mood, text, number, image_path, provider, model, seed, score, mean, count, decision, tie,
         cost, sha, iteration_id, operation, parent_ids, cell_index) in found:
        folder = f"run_{run_id}/{key}" if prefix_runs else key
        mine = ratings.get(iteration_id, [])
        by = _in_force_by(mine, decision, rule)
        out.append({
            "run_id": run_id, "prompt_id": key, "title": title, "scene": scene, "mood": mood, "final_prompt": text,
            "iteration": number, "file": f"{folder}/{_file_name(image_path)}", "provider": provider, "model": model,
            "seed": seed, "judge_score": score, "stars": _fmt_stars(mean), "star_count": count or 0, "decision": decision,
            "decision_rule": rule, "needs_tiebreak": bool(tie), "reviewer": "; ".join(r.reviewer for r in by),
            "note": "; ".join(r.note for r in by if r.note), "cost_usd": cost, "sha256": sha,
            "image_id": iteration_id, "operation": operation, "parent_ids": list(parent_ids or []), "cell_index": cell_index,
            "ratings": {r.reviewer: {"stars": r.stars, "decision": r.decision, "note": r.note, "rated_at": r.rated_at.isoformat()}
                        for r in mine},
            "_store": stores[run_id], "_key": image_path,
        })
    return out


def _file_name(key: str) -> str:
    """``PurePosixPath(key).name``, without building a path for the common key (``results/p001/iteration_1.jpg``)."""
    name = key.rpartition("/")[2]
    return name if name not in ("", ".") else PurePosixPath(key).name


def manifest_rows(s: Session, settings: Settings, run_ids: list[int], *, selection: str = "approved",
                  rule: str | None = None) -> list[dict[str, Any]]:
    """One row per image to export; ``selection`` is a key of :data:`SELECTIONS`; ``rule`` defaults to [review]."""
    if selection not in SELECTIONS:
        raise ExportError(f"selection {selection!r} is not one of {', '.join(SELECTIONS)}")
    if not run_ids:
        raise ExportError("choose at least one run to export")
    for rid in run_ids:
        get_run(s, rid)  # an unknown run is named, not silently empty
    cfg = review_config(settings)
    f = GalleryFilter(run_ids=tuple(run_ids), decisions=("approved",) if selection == "approved" else (),
                      best_only=selection == "best")
    return _collect(s, settings, f, sort=Sort("newest", descending=False), reviewer="", rule=rule or cfg.decision_rule,
                    disputed_star_spread=cfg.disputed_star_spread, prefix_runs=len(run_ids) > 1)


def manifest_rows_for_selection(s: Session, settings: Settings, f: GalleryFilter, *, reviewer: str = "", rule: str | None = None,
                                sort: Sort = NEWEST) -> list[dict[str, Any]]:
    """Rows for exactly what the Gallery shows with filter ``f`` (every page, in the grid's order)."""
    f.validate()
    cfg = review_config(settings)
    return _collect(s, settings, f, sort=sort, reviewer=reviewer, rule=rule or cfg.decision_rule,
                    disputed_star_spread=cfg.disputed_star_spread)


def manifest_json(run_ids: list[int], selection: str, images: list[dict[str, Any]], **header: Any) -> str:
    """One image per line: readable, and written by the C encoder (``indent=`` would use the slow Python one).

    ``header`` adds top-level keys (the decision rule, the filter of a Gallery selection).
    """
    encode = _row_encoder()
    lines = ",\n".join("    " + encode(row) for row in images)
    extra = "".join(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}," for k, v in header.items())
    return f'{{"runs": {json.dumps(run_ids)}, "selection": {json.dumps(selection)},{extra}\n "images": [\n{lines}\n]}}\n'


def _row_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, ensure_ascii=False)``, its C encoder made once for every row of a manifest
    rather than once a row (where the interpreter has no C encoder, ``json.dumps`` itself)."""
    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        return lambda value: json.dumps(value, ensure_ascii=False)
    plain = json.JSONEncoder(ensure_ascii=False)  # the arguments json.dumps gives its encoder
    encode = make({}, plain.default, json_encoder.encode_basestring, plain.indent, plain.key_separator, plain.item_separator,
                  plain.sort_keys, plain.skipkeys, plain.allow_nan)
    return lambda value: "".join(encode(value, 0)) if isinstance(value, dict) else plain.encode(value)


def manifest_table(images: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """CSV rows and columns: every reviewer's rating in its own ``<name>: stars|decision|note`` columns."""
    reviewers = sorted({name for row in images for name in (row.get("ratings") or {})}, key=lambda n: (n.casefold(), n))
    named: dict[str, list[str]] = {}  # a reviewer's three column names, made once
    flat = []
    for row in images:
        cells = dict(row)
        ratings = cells.pop("ratings", None)
        parents = row.get("parent_ids")
        cells["parent_ids"] = ";".join(str(i) for i in parents) if parents else ""  # one cell: "12;13"
        for name, rating in (ratings or {}).items():
            columns = named.get(name) or named.setdefault(name, [f"{name}: {part}" for part in RATING_PARTS])
            for column, part in zip(columns, RATING_PARTS, strict=True):
                cells[column] = rating.get(part)
        flat.append(cells)
    return flat, MANIFEST_FIELDS + [f"{name}: {part}" for name in reviewers for part in RATING_PARTS]


# OWASP "CSV injection": a cell starting with one of these is run as a formula by Excel, LibreOffice, Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """A text cell a spreadsheet would treat as a formula, prefixed with ``'`` so it shows as text.

    Numbers are left alone (a spreadsheet reads a number as a number); only ``manifest.csv`` is
    neutralised, ``manifest.json`` keeps the exact text.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def manifest_csv(images: list[dict[str, Any]], fields: list[str] | None = None) -> str:
    """The manifest as CSV for spreadsheets: ``fields`` (default :data:`MANIFEST_FIELDS`) as columns.

    Every cell goes through :func:`csv_safe`, the header too (a column may be named after a
    reviewer); keys not in ``fields`` are left out.
    """
    columns = fields or MANIFEST_FIELDS
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow([csv_safe(name) for name in columns])
    writer.writerows(zip(*(_safe_column([row.get(name) for row in images]) for name in columns), strict=True))
    return text.getvalue()


def _safe_column(values: list[Any]) -> list[Any]:
    """``[csv_safe(v) for v in values]``, column by column: a column with no formula-like text (nearly
    every one) is checked by C loops and kept as it is; only one that has some goes cell by cell."""
    kinds = set(map(type, values))
    if kinds == {str}:
        texts = values
    elif any(issubclass(kind, str) for kind in kinds):
        texts = [v for v in values if isinstance(v, str)]
    else:
        return values  # numbers, None: a spreadsheet reads them as they are
    if any(map(str.startswith, texts, repeat(FORMULA_STARTS))):
        return [csv_safe(v) for v in values]
    return values


COPY_CHUNK = 1 << 20  # zipfile.write copies in 8 KiB pieces; 1 MiB keeps pace with `zip -0`


def _add_stored(zf: zipfile.ZipFile, source: Path, name: str) -> None:
    """Add a file uncompressed, streamed from disk (never whole in memory)."""
    info = zipfile.ZipInfo.from_file(source, name)
    info.compress_type = zipfile.ZIP_STORED
    with open(source, "rb") as src, zf.open(info, "w") as dest:
        shutil.copyfileobj(src, dest, COPY_CHUNK)


def _add_object(zf: zipfile.ZipFile, store: ObjectStore, key: str, name: str) -> None:
    """Add an object of a bucket uncompressed, streamed from it in pieces (never whole in memory)."""
    found = store.info(key)
    if found is None:
        raise ExportError(f"{store.where(key)} is missing from the bucket; nothing was exported")
    info = zipfile.ZipInfo(name, date_time=found.modified.timetuple()[:6])
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = found.size
    with zf.open(info, "w", force_zip64=found.size > 2**31) as dest:
        for block in store.chunks(key):
            dest.write(block)


def _missing(rows: list[dict[str, Any]]) -> list[str]:
    """The rows' images not in their store: a folder is asked file by file, a bucket lists each run's
    ``results/`` once (one request per thousand objects, not one per image)."""
    missing, listed = [], {}
    for r in rows:
        store: ObjectStore = r["_store"]
        path = store.local_path(r["_key"])
        if path is not None:
            if not path.is_file():
                missing.append(str(path))
            continue
        if id(store) not in listed:
            listed[id(store)] = {o.key for o in store.listing("results/")}
        if r["_key"] not in listed[id(store)]:
            missing.append(store.where(r["_key"]))
    return missing


def check_sources(rows: list[dict[str, Any]]) -> None:
    """Every image of the export is on disk or in its bucket (checked before a byte is written or sent)."""
    try:
        missing = _missing(rows)
    except StorageError as e:
        raise ExportError(f"the images could not be listed: {e}") from None
    if missing:
        where = "on disk" if all(r["_store"].local_path(r["_key"]) for r in rows) else "from storage"
        listed = "\n  ".join(missing[:10]) + (f"\n  … and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ExportError(f"{len(missing)} image file(s) recorded in the database are missing {where}:\n  {listed}")


def manifest_files(rows: list[dict[str, Any]], run_ids: list[int], selection: str, **header: Any) -> dict[str, str]:
    """``manifest.csv`` and ``manifest.json`` of an export (a zip's or a bucket prefix's)."""
    private = [k for k in set().union(*rows) if k.startswith("_")]  # the store, its key: not for the manifests
    public = [dict(r) for r in rows]
    for r in public:
        for k in private:
            r.pop(k, None)
    return {"manifest.csv": manifest_csv(*manifest_table(public)), "manifest.json": manifest_json(run_ids, selection, public, **header)}


def add_manifests(zf: zipfile.ZipFile, rows: list[dict[str, Any]], run_ids: list[int], selection: str, **header: Any) -> None:
    for name, text in manifest_files(rows, run_ids, selection, **header).items():
        zf.writestr(name, text, compress_type=zipfile.ZIP_DEFLATED)


def add_image(zf: zipfile.ZipFile, row: dict[str, Any]) -> None:
    """One image of the export, stored as it is on disk or in the bucket."""
    store: ObjectStore = row["_store"]
    path = store.local_path(row["_key"])
    if path is not None:
        _add_stored(zf, path, row["file"])
    else:
        try:
            _add_object(zf, store, row["_key"], row["file"])
        except StorageError as e:
            raise ExportError(f"{row['file']}: {e}; nothing was exported") from None


def _write_zip(rows: list[dict[str, Any]], dest: Path, run_ids: list[int], selection: str, **header: Any) -> ExportResult:
    check_sources(rows)
    dest = dest.resolve()
    with atomic_file(dest) as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            add_image(zf, row)
        add_manifests(zf, rows, run_ids, selection, **header)
    return ExportResult(path=dest, images=len(rows), bytes_written=dest.stat().st_size)


def export_rows(s: Session, settings: Settings, run_ids: list[int], *, selection: str = "approved", rule: str) -> list[dict[str, Any]]:
    """The manifest rows of an export of ``run_ids``; an export with nothing in it is refused, naming why."""
    rows = manifest_rows(s, settings, run_ids, selection=selection, rule=rule)
    runs_text = ", ".join(str(r) for r in run_ids)
    if not rows:
        what = {"approved": "approved images", "best": "scored images", "all": "generated images"}[selection]
        raise ExportError(f"run{'s' if len(run_ids) > 1 else ''} {runs_text} {'have' if len(run_ids) > 1 else 'has'} "
                          f"no {what} to export; nothing was written")
    return rows


def build_zip(s: Session, settings: Settings, run_ids: list[int], dest: Path, *, selection: str = "approved",
              rule: str | None = None) -> ExportResult:
    rule = rule or review_config(settings).decision_rule
    rows = export_rows(s, settings, run_ids, selection=selection, rule=rule)
    return _write_zip(rows, dest, run_ids, selection, decision_rule=rule)


def build_selection_zip(s: Session, settings: Settings, f: GalleryFilter, dest: Path, *, reviewer: str = "",
                        rule: str | None = None, sort: Sort = NEWEST) -> ExportResult:
    """**Export this selection**: a zip of exactly the images the Gallery shows with filter ``f``."""
    rule = rule or review_config(settings).decision_rule
    rows = manifest_rows_for_selection(s, settings, f, reviewer=reviewer, rule=rule, sort=sort)
    if not rows:
        raise ExportError(f"no images match this selection ({f.describe()}); nothing was written")
    run_ids = sorted({r["run_id"] for r in rows})
    return _write_zip(rows, dest, run_ids, "gallery selection", decision_rule=rule, filter=f.describe(),
                      reviewer=reviewer.strip())


def selection_export_path(settings: Settings) -> Path:
    """Where the dashboard writes a Gallery selection: ``data/exports/darkroom_selection_<time>.zip``."""
    stamp = utcnow().strftime("%Y%m%d_%H%M%S_%f")
    return settings.exports_dir / f"darkroom_selection_{stamp}.zip"


def export_path(settings: Settings, run_ids: list[int], selection: str) -> Path:
    """Where the dashboard writes an export: ``data/exports/darkroom_run-1-2_approved_<time>.zip``."""
    stamp = utcnow().strftime("%Y%m%d_%H%M%S_%f")
    ids = "-".join(str(r) for r in sorted(run_ids))
    if len(ids) > 80:  # a whole project's runs: a file name stays short (manifest.json lists every run)
        ids = f"{min(run_ids)}-to-{max(run_ids)}-{len(run_ids)}runs"
    return settings.exports_dir / f"darkroom_run-{ids}_{selection}_{stamp}.zip"
