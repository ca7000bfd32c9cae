"""Export to a bucket: the images of a zip export, uploaded as objects under an ``s3://bucket/prefix``.

The same rows and manifests as :mod:`pipeline.review.export` (one folder per prompt id,
``manifest.csv`` and ``manifest.json``), read from wherever the run keeps its images and put in
a batch, ``[storage] upload_workers`` at a time. Each upload carries the SHA-256 the database
recorded for the image, and the bucket refuses bytes that do not match it. ``manifest.json`` is
put last: a prefix holding it holds every image it lists; an export that fails part-way leaves
no manifest and names the images that did not go.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from pipeline.config import Settings
from pipeline.errors import ConfigError, ExportError, StorageError
from pipeline.review.decisions import review_config
from pipeline.review.export import check_sources, export_rows, manifest_files
from pipeline.store.objects import ObjectStore, StorageOptions, bucket_store, parse_bucket_url


@dataclass(frozen=True)
class BucketExport:
    url: str  # s3://bucket/prefix
    images: int
    bytes_sent: int


def destination(settings: Settings, url: str) -> ObjectStore:
    """The bucket prefix ``url`` as a store; a malformed URL is an :class:`ExportError` naming it."""
    try:
        return bucket_store(parse_bucket_url(url, what="--to"), StorageOptions.of(settings))
    except ConfigError as e:
        raise ExportError(str(e)) from None


def _copy(row: dict[str, Any], dest: ObjectStore) -> int:
    data = row["_store"].get(row["_key"])
    dest.put(row["file"], data, sha256=row.get("sha256") or "", content_type="")
    return len(data)


def upload_rows(settings: Settings, rows: list[dict[str, Any]], url: str, run_ids: list[int], selection: str,
                **header: Any) -> BucketExport:
    check_sources(rows)
    dest = destination(settings, url)
    sent, failed = 0, []
    with ThreadPoolExecutor(max_workers=max(1, StorageOptions.of(settings).upload_workers), thread_name_prefix="export") as pool:
        for row, outcome in zip(rows, [pool.submit(_copy, row, dest) for row in rows], strict=True):
            try:
                sent += outcome.result()
            except StorageError as e:
                failed.append(f"{row['file']}: {e}")
    if failed:
        listed = "\n  ".join(failed[:10]) + (f"\n  … and {len(failed) - 10} more" if len(failed) > 10 else "")
        raise ExportError(f"{len(failed)} of {len(rows)} image(s) could not be uploaded to {url}; no manifest was "
                          f"written:\n  {listed}")
    try:
        for name, text in sorted(manifest_files(rows, run_ids, selection, **header).items()):  # .csv, then .json: last
            data = text.encode("utf-8")
            dest.put(name, data, content_type="text/csv" if name.endswith(".csv") else "application/json")
            sent += len(data)
    except StorageError as e:
        raise ExportError(f"the images went to {url}, but the manifest did not: {e}") from None
    return BucketExport(url=url.rstrip("/"), images=len(rows), bytes_sent=sent)


def export_to_bucket(s: Session, settings: Settings, run_ids: list[int], url: str, *, selection: str = "approved",
                     rule: str | None = None) -> BucketExport:
    """**Export to an S3 prefix**: the chosen images of ``run_ids`` and the manifests, uploaded to ``url``."""
    destination(settings, url)  # a bad URL is named before the database is read
    rule = rule or review_config(settings).decision_rule
    rows = export_rows(s, settings, run_ids, selection=selection, rule=rule)
    return upload_rows(settings, rows, url, run_ids, selection, decision_rule=rule)
