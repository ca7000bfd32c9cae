"""A run's progress as server-sent events, so a client need not poll.

Events: ``progress`` (the run's counts, whenever they change), ``item`` (a prompt whose state
changed), ``end`` (the run stopped: completed, failed, cancelled, paused or interrupted; the
stream then closes). A comment line every ``[api] events_heartbeat_s`` keeps proxies from
closing a quiet stream. The first events give the whole current state, so a client that
reconnects needs no ``Last-Event-ID``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from pipeline.api.auth import Reviewer
from pipeline.api.context import ApiContext, ctx_of
from pipeline.api.lookups import run_or_404
from pipeline.api.schemas import RunOut
from pipeline.runs.records import ItemState, RunSummary, item_states, run_summaries
from pipeline.store.db import session

router = APIRouter(prefix="/v1/runs", tags=["runs"])
EVENT_SCHEMA = {  # one event of the stream; ``data`` is JSON text: a run (progress, end) or a prompt's state (item)
    "type": "object",
    "properties": {"event": {"type": "string", "enum": ["progress", "item", "end"]}, "data": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}},
}


def _read(ctx: ApiContext, run_id: int) -> tuple[RunSummary, list[ItemState]]:
    with session(ctx.engine) as s:
        return run_summaries(s, run_ids=[run_id])[0], item_states(s, run_id)


def _event(name: str, seq: int, data: dict[str, Any]) -> bytes:
    return f"id: {seq}\nevent: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def run_events(ctx: ApiContext, run_id: int) -> AsyncIterator[bytes]:
    seq, last_run = 0, None
    last_items: dict[str, ItemState] = {}
    quiet_since = time.monotonic()
    yield b"retry: 2000\n\n"
    while True:
        summary, states = await anyio.to_thread.run_sync(_read, ctx, run_id)
        sent = False
        for st in states:
            if last_items.get(st.prompt_key) != st:
                last_items[st.prompt_key] = st
                seq += 1
                yield _event("item", seq, {"run_id": run_id, **dataclasses.asdict(st)})
                sent = True
        run = RunOut.of(summary).model_dump(mode="json")
        run.pop("elapsed_s")  # changes every poll: not news
        if run != last_run:
            last_run = run
            seq += 1
            yield _event("progress", seq, RunOut.of(summary).model_dump(mode="json"))
            sent = True
        if not summary.active:
            seq += 1
            yield _event("end", seq, RunOut.of(summary).model_dump(mode="json"))
            return
        now = time.monotonic()
        if sent:
            quiet_since = now
        elif now - quiet_since >= ctx.api.events_heartbeat_s:
            quiet_since = now
            yield b": keep-alive\n\n"
        await anyio.sleep(ctx.api.events_poll_s)


@router.get("/{run_id}/events", response_class=StreamingResponse, summary="The run's progress as server-sent events",
            responses={200: {"content": {"text/event-stream": {"schema": EVENT_SCHEMA}}, "description": "events: progress, item, end"}})
def events(request: Request, run_id: int, token: Reviewer) -> StreamingResponse:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        run_or_404(s, run_id)
    return StreamingResponse(run_events(ctx, run_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
