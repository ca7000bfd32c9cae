"""One prompt, the quick path: a one-prompt run (one iteration unless asked for more).

``wait=true`` blocks until the run ends or ``wait_s`` passes and answers 200 with the images,
each with its provider, the service's original URL, the link to its bytes here and its facts;
otherwise (or on time-out) 202 with the run to follow.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlmodel import col, select

from pipeline.api import idempotency, serialize
from pipeline.api.auth import Operator
from pipeline.api.bodies import parse_json, require_json, validated
from pipeline.api.context import ApiContext, ctx_of
from pipeline.api.launching import launch, spec_from_document
from pipeline.api.schemas import Generate, GenerateOut, RunOut
from pipeline.runs import control
from pipeline.runs.records import RunSummary
from pipeline.store.db import session
from pipeline.store.models import Iteration, RunItem

router = APIRouter(prefix="/v1/generate", tags=["generate"])
PROMPT_ID = "generate"
POLL_S = 0.2


def _document(body: Generate) -> dict[str, Any]:
    prompt: dict[str, Any] = {"id": PROMPT_ID, "prompt": body.prompt}
    for key in ("negative_prompt", "title"):
        if getattr(body, key):
            prompt[key] = getattr(body, key)
    for key in ("seed", "size"):
        if getattr(body, key) is not None:
            prompt[key] = getattr(body, key)
    return {"name": body.name or "generate", "prompts": [prompt]}


def _images(ctx: ApiContext, run_id: int) -> list[dict[str, Any]]:
    """The run's images, the best one first."""
    with session(ctx.engine) as s:
        rows = s.exec(select(Iteration, RunItem.final_iteration).join(RunItem, col(RunItem.id) == Iteration.run_item_id)
                      .where(RunItem.run_id == run_id, Iteration.status == "ok").order_by(col(Iteration.number))).all()
    images = [{**serialize.iteration(it), "best": it.number == best} for it, best in rows]
    return sorted(images, key=lambda i: not i["best"])


async def _wait(ctx: ApiContext, run_id: int, seconds: float) -> RunSummary:
    deadline = time.monotonic() + seconds
    while True:
        summary = await run_in_threadpool(control.summary, ctx.engine, run_id)
        if not summary.active or time.monotonic() >= deadline:
            return summary
        await anyio.sleep(POLL_S)


@router.post("", status_code=202, response_model=GenerateOut, responses={200: {"model": GenerateOut, "description": "finished"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": {"$ref": "#/components/schemas/Generate"}}}}},
             summary="Generate images for one prompt (wait=true: block until they are made)")
async def generate(request: Request, token: Operator) -> JSONResponse:
    ctx = ctx_of(request)
    require_json(request)
    raw = await request.body()
    body: Generate = validated(Generate, parse_json(raw))
    if body.iterations is None:
        body = body.model_copy(update={"iterations": 1})
    spec = await run_in_threadpool(spec_from_document, ctx.settings, _document(body))
    wait_s = min(body.wait_s if body.wait_s is not None else ctx.api.generate_wait_s, ctx.api.generate_wait_s)

    async def produce() -> idempotency.Produced:
        summary = await run_in_threadpool(launch, ctx, spec, body)
        if body.wait and wait_s > 0:
            summary = await _wait(ctx, summary.id, wait_s)
        images = await run_in_threadpool(_images, ctx, summary.id)
        out = GenerateOut(run=RunOut.of(summary), images=images)
        status = 202 if summary.active else 200
        return status, out.model_dump(mode="json"), {"Location": out.run.links["self"]}

    return await idempotency.once(request, ctx.engine, token.id, ctx.api.idempotency_hours,
                                  idempotency.fingerprint(request.method, request.url.path, raw), produce)
