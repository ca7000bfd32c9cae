"""A run's images and manifest as a zip, streamed from disk as it is written."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from pipeline.api.auth import Reviewer
from pipeline.api.context import ctx_of
from pipeline.api.lookups import run_or_404
from pipeline.api.streaming import sources, zip_body
from pipeline.review.decisions import review_config
from pipeline.review.export import export_rows
from pipeline.store.db import session

router = APIRouter(prefix="/v1/runs", tags=["export"])


@router.get("/{run_id}/export.zip", response_class=StreamingResponse, summary="The run's images and manifest.csv/json as a zip",
            responses={200: {"content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the zip, streamed"}})
def export_zip(request: Request, run_id: int, token: Reviewer,
               selection: Literal["all", "approved", "best"] = "approved") -> StreamingResponse:
    ctx = ctx_of(request)
    rule = review_config(ctx.settings).decision_rule
    with session(ctx.engine) as s:
        run_or_404(s, run_id)
        rows = export_rows(s, ctx.settings, [run_id], selection=selection, rule=rule)
    members = sources(rows)  # every image there before a byte is sent
    name = f"darkroom_run-{run_id}_{selection}.zip"
    body = zip_body(rows, members, [run_id], selection, decision_rule=rule)
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if body.length is not None:  # every image a file: its length is known (a bucket's zip is chunked)
        headers["Content-Length"] = str(body.length)
    return StreamingResponse(body.pieces, media_type="application/zip", headers=headers)
