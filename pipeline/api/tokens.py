"""API tokens: made, listed and revoked by an admin; only their SHA-256 is stored.

A token is ``drk_`` and 43 random URL-safe characters (256 bits), shown once when created. Its
name is the reviewer its reviews are written as, so it follows the reviewer-name rules. Roles
are ordered: a reviewer reviews; an operator also starts, cancels and resumes runs; an admin
also manages tokens.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from pipeline.errors import InputError
from pipeline.review.events import validate_reviewer
from pipeline.store.db import session
from pipeline.store.models import ApiToken, row_id, utcnow

ROLES = ("reviewer", "operator", "admin")
TOKEN_PREFIX = "drk_"
SHOWN_PREFIX_CHARS = 10  # "drk_" and 6 more: enough to tell tokens apart in a list, far too few to guess one
LAST_USED_EVERY_S = 60.0  # last_used_at is written at most this often per token (not on every request)
REMEMBER_S = 1.0  # a token found is not looked up again for this long: revoked elsewhere, it works at most this much longer
REMEMBERED_TOKENS = 1024


def rank(role: str) -> int:
    return ROLES.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def allows(self, role: str) -> bool:
        return rank(self.role) >= rank(role)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "role": self.role, "prefix": self.prefix, "created_at": self.created_at.isoformat(),
                "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def _info(t: ApiToken) -> TokenInfo:
    return TokenInfo(row_id(t), t.name, t.role, t.prefix, t.created_at, t.last_used_at, t.revoked_at)


def check_role(role: str) -> str:
    if role not in ROLES:
        raise InputError(f"{role!r} is not one of {', '.join(ROLES)}", field="role")
    return role


def create_token(engine: Engine, name: str, role: str = "reviewer") -> tuple[TokenInfo, str]:
    """A new token for ``name`` with ``role``; returns it with the token itself (never stored)."""
    try:
        clean = validate_reviewer(name)
    except InputError as e:
        raise InputError(e.detail.removeprefix("reviewer: "), field="name") from None
    check_role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with session(engine) as s:
        if s.exec(select(ApiToken).where(ApiToken.name == clean, col(ApiToken.revoked_at).is_(None))).first() is not None:
            raise InputError(f"a token named {clean!r} exists already; revoke it first or choose another name", field="name")
        row = ApiToken(name=clean, role=role, token_hash=hash_token(token), prefix=token[:SHOWN_PREFIX_CHARS])
        s.add(row)
        s.commit()
        s.refresh(row)
        return _info(row), token


def list_tokens(engine: Engine, *, include_revoked: bool = True) -> list[TokenInfo]:
    with session(engine) as s:
        q = select(ApiToken).order_by(col(ApiToken.id))
        if not include_revoked:
            q = q.where(col(ApiToken.revoked_at).is_(None))
        return [_info(t) for t in s.exec(q)]


def revoke_token(engine: Engine, which: str) -> TokenInfo:
    """Revoke the active token named ``which`` (or with that id); it stops working at once."""
    with session(engine) as s:
        q = select(ApiToken).where(col(ApiToken.revoked_at).is_(None))
        rows = list(s.exec(q.where(ApiToken.name == which.strip())))
        if not rows and which.strip().isdigit():
            rows = list(s.exec(q.where(ApiToken.id == int(which))))
        if not rows:
            raise InputError(f"no active token named {which!r}; `python -m pipeline token list` lists them", field="name")
        row = rows[0]
        row.revoked_at = utcnow()
        s.commit()
        s.refresh(row)
        return _info(row)


class Authenticator:
    """Finds the active token a bearer value belongs to, without a write (``last_used_at`` is
    written by :meth:`touch`, at most every minute per token).

    A token found is remembered for :data:`REMEMBER_S` (one prepared indexed read, then none for
    that second): a token revoked through this server stops working at once (:meth:`forget`), one
    revoked by another process (``python -m pipeline token revoke``) within that second. An
    unknown token is never remembered, so guessing costs a read each time and fills no memory.
    """

    def __init__(self, engine: Engine, remember_s: float = REMEMBER_S) -> None:
        self.engine = engine
        self.remember_s = remember_s
        self._written: dict[int, float] = {}
        self._known: dict[str, tuple[float, TokenInfo]] = {}  # token hash -> (until, token)

    def __call__(self, token: str) -> TokenInfo | None:
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        now = time.monotonic()
        known = self._known.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        with self.engine.connect() as conn:  # columns, not a mapped row; the statement is built once
            row = conn.execute(_ACTIVE_TOKEN, {"token_hash": digest}).first()
        if row is None:
            self._known.pop(digest, None)
            return None
        token_id, name, role, prefix, created_at, last_used_at, revoked_at = row
        info = TokenInfo(int(token_id or 0), name, role, prefix, created_at, last_used_at, revoked_at)
        if len(self._known) >= REMEMBERED_TOKENS:
            self._known = {k: v for k, v in self._known.items() if v[0] > now}
            if len(self._known) >= REMEMBERED_TOKENS:
                self._known.clear()
        self._known[digest] = (now + self.remember_s, info)
        return info

    def forget(self) -> None:
        """Drop every remembered token (a token was revoked here: it stops working at once)."""
        self._known = {}

    def due(self, token_id: int) -> bool:
        """Whether ``last_used_at`` of this token should be written now (claims the write)."""
        now = time.monotonic()
        if now - self._written.get(token_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return False
        self._written[token_id] = now
        return True

    def touch(self, token_id: int) -> None:
        with session(self.engine) as s:
            row = s.get(ApiToken, token_id)
            if row is not None:
                row.last_used_at = utcnow()
                s.commit()


_ACTIVE_TOKEN = sqlalchemy.select(
    col(ApiToken.id), col(ApiToken.name), col(ApiToken.role), col(ApiToken.prefix), col(ApiToken.created_at),
    col(ApiToken.last_used_at), col(ApiToken.revoked_at),
).where(col(ApiToken.token_hash) == sqlalchemy.bindparam("token_hash"), col(ApiToken.revoked_at).is_(None))
