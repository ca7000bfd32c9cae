"""Liveness and readiness: no token needed (a load balancer or a supervisor asks)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from pipeline import __version__
from pipeline.api.context import ctx_of

router = APIRouter(tags=["health"])


@router.get("/health", summary="Liveness: the process answers")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", summary="Readiness: the database answers and the runner is alive",
            responses={503: {"description": "not ready: the body says what is not"}})
def ready(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    body: dict[str, Any] = {"database": "ok", "runner": "not run by this server"}
    ok = True
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # any failure to reach it means not ready; say what, no traceback
        body["database"] = f"unreachable: {type(e).__name__}"
        ok = False
    if ctx.runner is not None:
        body["runner"] = "alive" if ctx.runner.alive else "stopped"
        body["executing"] = ctx.runner.executing
        ok = ok and ctx.runner.alive
    body["status"] = "ready" if ok else "not ready"
    return JSONResponse(body, status_code=200 if ok else 503)
