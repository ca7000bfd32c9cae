"""Bearer tokens on every route but /health and /ready; the token's role limits what it may do.

The token is looked up on the event loop itself: one indexed read (SQLite in WAL mode never
blocks a reader), cheaper than the hand-over to a worker thread that a request would otherwise
pay before any of its own work.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.context import ctx_of
from pipeline.api.problems import ApiProblem
from pipeline.api.tokens import TokenInfo

bearer = HTTPBearer(auto_error=False, description="A token from `python -m pipeline token create`")
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="darkroom"'}


def require(role: str) -> Callable[..., Awaitable[TokenInfo]]:
    """A dependency: the calling token, which must have at least ``role``."""

    async def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenInfo:
        if credentials is None:
            raise ApiProblem(401, "send a token: Authorization: Bearer <token> (python -m pipeline token create)",
                             slug="unauthenticated", headers=CHALLENGE)
        ctx = ctx_of(request)
        token = ctx.authenticate(credentials.credentials)
        if token is None:
            raise ApiProblem(401, "the token is unknown or revoked", slug="unauthenticated", headers=CHALLENGE)
        if ctx.authenticate.due(token.id):
            await run_in_threadpool(ctx.authenticate.touch, token.id)
        wait = ctx.limiter.take(token.id)
        if wait > 0:
            raise ApiProblem(429, f"too many requests from token {token.name!r}; retry in {wait:.1f} s", slug="rate-limited",
                             headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if not token.allows(role):
            raise ApiProblem(403, f"token {token.name!r} is a {token.role}; this needs a {role} token", slug="forbidden")
        request.state.token = token
        return token

    return caller


Reviewer = Annotated[TokenInfo, Depends(require("reviewer"))]
Operator = Annotated[TokenInfo, Depends(require("operator"))]
Admin = Annotated[TokenInfo, Depends(require("admin"))]
