"""The edge of every request: body size limits (413), the request metrics, ``nosniff``, and a
plain 500 problem for a bug (logged here with its traceback; the client never sees either).

Pure ASGI (no buffering): a body announced too large by ``Content-Length`` is refused before it
is read; a chunked body is counted as it arrives and refused at the byte that passes the limit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.metrics import RequestMetrics
from pipeline.api.problems import MEDIA_TYPE, ApiProblem, problem_body
from pipeline.errors import human_bytes
from pipeline.redaction import redact

log = logging.getLogger("pipeline.api")


class Edge:
    def __init__(self, app: ASGIApp, *, limits: Callable[[], tuple[int, int]], metrics: Callable[[], RequestMetrics]) -> None:
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        body_limit, upload_limit = self.limits()
        limit = upload_limit if headers.get("content-type", "").lower().startswith("multipart/") else body_limit
        status, started_response = 500, False

        async def sending(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status, started_response = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]
            await send(message)

        received = 0

        async def receiving() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)
            return message

        try:
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                await _refuse(scope, sending, _too_large(limit))
                return
            await self.app(scope, receiving, sending)
        except Exception as e:  # a bug: logged without its text reaching the client, answered 500 (if nothing was sent yet)
            log.error("%s %s failed: %s: %s", scope.get("method"), scope.get("path"), type(e).__name__, redact(str(e)), exc_info=True)
            if started_response:
                raise
            await _refuse(scope, sending, ApiProblem(500, "an unexpected error; it has been logged", slug="internal",
                                                     title="Internal error"))
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics().observe(scope.get("method", ""), template, status, time.perf_counter() - started)


def _too_large(limit: int) -> ApiProblem:
    return ApiProblem(413, f"the request body is over the limit of {human_bytes(limit)}", slug="too-large", title="Request too large")


async def _refuse(scope: Scope, send: Send, problem: ApiProblem) -> None:
    body = json.dumps(problem_body(problem.status, problem.detail, slug=problem.slug, title=problem.title,
                                   instance=scope.get("path", ""))).encode()
    await send({"type": "http.response.start", "status": problem.status,
                "headers": [(b"content-type", MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
