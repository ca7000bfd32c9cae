"""Finding what a path names, or a 404 that says what was not found; cursors for pagination."""

from __future__ import annotations

import base64
import binascii

from sqlmodel import Session

from pipeline.api.problems import ApiProblem
from pipeline.store.models import MAX_ROW_ID, Iteration, Run


def run_not_found(run_id: int) -> ApiProblem:
    return ApiProblem(404, f"no run {run_id}; GET /v1/runs lists the runs", slug="run-not-found", title="Run not found")


def run_or_404(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id) if 0 < run_id <= MAX_ROW_ID else None
    if run is None:
        raise run_not_found(run_id)
    return run


def image_or_404(s: Session, iteration_id: int) -> Iteration:
    it = s.get(Iteration, iteration_id) if 0 < iteration_id <= MAX_ROW_ID else None
    if it is None or it.status != "ok" or not it.image_path:
        raise ApiProblem(404, f"no image {iteration_id}" if it is None else f"iteration {iteration_id} made no image ({it.status})",
                         slug="image-not-found", title="Image not found")
    return it


def encode_cursor(kind: str, value: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def decode_cursor(kind: str, cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        found, _, value = text.partition(":")
        if found == kind and value.lstrip("-").isdigit() and len(value) < 20 and abs(int(value)) <= MAX_ROW_ID:
            return int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiProblem(422, "cursor: not a cursor this list gave out; start again without one", slug="invalid-cursor", field="cursor")
