"""``GET /metrics``: Prometheus text for a scraper holding a token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from pipeline.api.auth import Reviewer
from pipeline.api.context import ctx_of
from pipeline.api.metrics import pipeline_lines
from pipeline.store.db import session

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse, summary="Runs, calls by service and outcome, latency, cost, API requests",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format 0.0.4"}})
def metrics(request: Request, token: Reviewer) -> PlainTextResponse:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        lines = pipeline_lines(s)
    lines += ctx.metrics.lines()
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")
