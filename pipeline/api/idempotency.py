"""``Idempotency-Key`` on POST /v1/runs and /v1/generate: a retried request never starts a second run.

The first request with a key records it (status 0: in progress) before it does anything; the
unique (token, key) row means two requests racing with one key cannot both get through. When it
succeeds its response is kept; a retry with the same key and the same request replays it
(``Idempotent-Replayed: true``). The same key with a different request is refused (422), and a
retry while the first is still being served gets 409. A request that fails keeps nothing, so it
can be retried with its key. Keys expire after ``[api] idempotency_hours``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from pipeline.api.problems import ApiProblem
from pipeline.store.db import session
from pipeline.store.models import ApiIdempotency, utcnow

HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join((method.encode(), path.encode(), body))).hexdigest()


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_CHARS or not key.isprintable() or not key.isascii():
        raise ApiProblem(422, f"{HEADER} must be 1–{MAX_KEY_CHARS} printable ASCII characters (a UUID is a good choice)",
                         slug="invalid-idempotency-key", field=HEADER)
    return key


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)  # SQLite gives naive datetimes back


def begin(engine: Engine, token_id: int, key: str, request_hash: str, ttl_hours: float) -> tuple[int, dict[str, Any]] | None:
    """Claim ``key`` for this request (None: go ahead), or the kept (status, body) to replay."""
    with session(engine) as s:
        found = s.exec(select(ApiIdempotency).where(ApiIdempotency.token_id == token_id, ApiIdempotency.key == key)).first()
        if found is not None and _aware(found.created_at) < utcnow() - timedelta(hours=ttl_hours):
            s.delete(found)
            s.commit()
            found = None
        if found is None:
            s.add(ApiIdempotency(token_id=token_id, key=key, request_hash=request_hash))
            try:
                s.commit()
                return None
            except IntegrityError:  # another request with this key got there first
                s.rollback()
                found = s.exec(select(ApiIdempotency).where(ApiIdempotency.token_id == token_id, ApiIdempotency.key == key)).first()
                if found is None:
                    raise ApiProblem(409, f"a request with this {HEADER} is being served; retry shortly", slug="idempotency-in-progress",
                                     headers={"Retry-After": "1"}) from None
        if found.request_hash != request_hash:
            raise ApiProblem(422, f"this {HEADER} was used for a different request; use a new key for a new request",
                             slug="idempotency-key-reused", field=HEADER)
        if found.status_code == 0:
            raise ApiProblem(409, f"a request with this {HEADER} is still being served; retry shortly", slug="idempotency-in-progress",
                             headers={"Retry-After": "1"})
        return found.status_code, found.response


def finish(engine: Engine, token_id: int, key: str, status: int, body: dict[str, Any]) -> None:
    with session(engine) as s:
        row = s.exec(select(ApiIdempotency).where(ApiIdempotency.token_id == token_id, ApiIdempotency.key == key)).one()
        row.status_code, row.response = status, body
        s.commit()


def abandon(engine: Engine, token_id: int, key: str) -> None:
    """The request failed: forget the key so a retry is served afresh."""
    with session(engine) as s:
        s.execute(delete(ApiIdempotency).where(col(ApiIdempotency.token_id) == token_id, col(ApiIdempotency.key) == key))
        s.commit()


Produced = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, headers


async def once(request: Request, engine: Engine, token_id: int, ttl_hours: float, request_hash: str,
               produce: Callable[[], Awaitable[Produced]]) -> JSONResponse:
    """Serve ``produce`` once per ``Idempotency-Key`` (every time when the request has none)."""
    key = request.headers.get(HEADER)
    if key is None:
        status, body, headers = await produce()
        return JSONResponse(body, status_code=status, headers=headers)
    check_key(key)
    kept = await run_in_threadpool(begin, engine, token_id, key, request_hash, ttl_hours)
    if kept is not None:
        status, body = kept
        return JSONResponse(body, status_code=status, headers={"Idempotent-Replayed": "true", **_location(body)})
    try:
        status, body, headers = await produce()
    except BaseException:
        await run_in_threadpool(abandon, engine, token_id, key)
        raise
    await run_in_threadpool(finish, engine, token_id, key, status, body)
    return JSONResponse(body, status_code=status, headers=headers)


def _location(body: dict[str, Any]) -> dict[str, str]:
    run = body.get("run", body)
    link = run.get("links", {}).get("self") if isinstance(run, dict) else None
    return {"Location": link} if isinstance(link, str) else {}
