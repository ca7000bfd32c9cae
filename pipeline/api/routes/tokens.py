"""Tokens, for admins: list, create (the token is in this response only), revoke."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipeline.api.auth import Admin
from pipeline.api.context import ctx_of
from pipeline.api.schemas import NewToken
from pipeline.api.tokens import create_token, list_tokens, revoke_token

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.get("", summary="Every token (never the token itself)")
def get_tokens(request: Request, token: Admin) -> dict[str, list[dict[str, Any]]]:
    return {"data": [t.as_dict() for t in list_tokens(ctx_of(request).engine)]}


@router.post("", status_code=201, summary="Create a token; it is shown in this response only")
def post_token(request: Request, body: NewToken, token: Admin) -> dict[str, Any]:
    info, secret = create_token(ctx_of(request).engine, body.name, body.role)
    return {**info.as_dict(), "token": secret}


@router.delete("/{name}", summary="Revoke the active token with this name; it stops working at once")
def delete_token(request: Request, name: str, token: Admin) -> dict[str, Any]:
    ctx = ctx_of(request)
    revoked = revoke_token(ctx.engine, name)
    ctx.authenticate.forget()
    return revoked.as_dict()
