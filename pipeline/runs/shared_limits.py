"""Provider limits and breakers shared by worker processes, over the database.

:class:`DatabaseLimits` implements :class:`~pipeline.resilience.limits.SharedLimits`: a service's
``max_concurrency`` is that many rows of ``provider_slot``; a call holds one (claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL) under a lease that the worker's heartbeat renews, so a
killed worker's slots come back when the lease runs out. ``provider_pace`` holds the earliest
start of the service's next call (``requests_per_minute``) and a ``Retry-After`` pause, for every
process at once. :class:`DatabaseHealth` implements
:class:`~pipeline.resilience.breaker.SharedHealth` with ``provider_health``.

Why rows and not PostgreSQL advisory locks: an advisory lock lives on one connection, so each
call in flight would pin a connection for its whole duration (64 calls, 64 connections per
worker); a row with a lease costs two short statements per call and works on SQLite too.

Times are Unix seconds from each machine's clock: the machines are expected to keep NTP time
(a skew of a second shifts pacing by that much; leases are tens of seconds).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

from sqlalchemy import or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.store.db import session
from pipeline.store.models import ProviderHealth, ProviderPace, ProviderSlot
from pipeline.store.statements import insert_or_ignore

POLL_MIN_S, POLL_MAX_S = 0.02, 0.5  # waiting for a free slot: back off between these
HEALTH_CACHE_S = 1.0  # how stale a process's view of another's breaker may be
_jitter = random.Random()  # its own: the global one belongs to whoever else runs in this process


@dataclass(frozen=True)
class SlotToken:
    service: str
    slot: int


class DatabaseLimits:
    def __init__(self, engine: Engine, holder: str, lease_s: float) -> None:
        self.engine, self.holder, self.lease_s = engine, holder, lease_s
        self._slots_made: dict[str, int] = {}  # service -> slots known to exist

    # ---- SharedLimits ----------------------------------------------------------------------
    async def acquire(self, service: str, max_concurrency: int, requests_per_minute: float) -> object:
        wait = POLL_MIN_S
        while True:
            slot, delay = await asyncio.to_thread(self._try_claim, service, max_concurrency, requests_per_minute)
            if slot is not None:
                if delay > 0:  # this call's turn under requests_per_minute
                    try:
                        await asyncio.sleep(delay)
                    except asyncio.CancelledError:
                        await asyncio.to_thread(self._free, SlotToken(service, slot))
                        raise
                return SlotToken(service, slot)
            await asyncio.sleep(max(delay, wait * _jitter.uniform(0.5, 1.0)))
            wait = min(POLL_MAX_S, wait * 2)

    async def release(self, token: object) -> None:
        if isinstance(token, SlotToken):
            await asyncio.to_thread(self._free, token)

    def pause(self, service: str, seconds: float) -> None:
        until = time.time() + seconds
        with session(self.engine) as s:
            self._ensure_pace(s, service)
            s.execute(update(ProviderPace).where(col(ProviderPace.service) == service, col(ProviderPace.paused_until) < until)
                      .values(paused_until=until))
            s.commit()

    # ---- the heartbeat -----------------------------------------------------------------------
    def renew(self) -> None:
        """Extend the leases of the slots this process holds (its calls still in flight)."""
        with session(self.engine) as s:
            s.execute(update(ProviderSlot).where(col(ProviderSlot.holder) == self.holder).values(lease_until=time.time() + self.lease_s))
            s.commit()

    def free_all(self) -> None:
        """This process stops: its slots are free at once, not when their leases run out."""
        with session(self.engine) as s:
            s.execute(update(ProviderSlot).where(col(ProviderSlot.holder) == self.holder).values(holder="", lease_until=0.0))
            s.commit()

    # ---- statements ----------------------------------------------------------------------------
    def _ensure_pace(self, s: Session, service: str) -> None:
        s.execute(insert_or_ignore(self.engine.dialect.name, ProviderPace).values(service=service, next_start=0.0, paused_until=0.0))

    def _try_claim(self, service: str, limit: int, rpm: float) -> tuple[int | None, float]:
        """One transaction: a free slot (or None) and how long to wait (the pause, or the pacing)."""
        now = time.time()
        with session(self.engine) as s:
            if self._slots_made.get(service, 0) < limit:
                self._ensure_pace(s, service)
                for n in range(limit):
                    s.execute(insert_or_ignore(self.engine.dialect.name, ProviderSlot).values(service=service, slot=n, holder="", lease_until=0.0))
                s.commit()
                self._slots_made[service] = limit
            read_pace = select(ProviderPace).where(ProviderPace.service == service)
            pace = s.exec(read_pace.with_for_update() if rpm > 0 else read_pace).first()  # pacing: one claimer at a time
            if pace is not None and pace.paused_until > now:
                s.rollback()
                return None, pace.paused_until - now
            slot = s.exec(
                select(ProviderSlot.slot).where(
                    ProviderSlot.service == service, col(ProviderSlot.slot) < limit,
                    or_(col(ProviderSlot.holder) == "", col(ProviderSlot.lease_until) < now))
                .order_by(col(ProviderSlot.slot)).limit(1).with_for_update(skip_locked=True)
            ).first()
            if slot is None:
                s.rollback()
                return None, 0.0
            taken = s.execute(update(ProviderSlot).where(
                col(ProviderSlot.service) == service, col(ProviderSlot.slot) == slot,
                or_(col(ProviderSlot.holder) == "", col(ProviderSlot.lease_until) < now))
                .values(holder=self.holder, lease_until=now + self.lease_s))
            if taken.rowcount != 1:  # type: ignore[attr-defined]  # SQLite: another process took it first
                s.rollback()
                return None, 0.0
            delay = 0.0
            if rpm > 0 and pace is not None:
                start = max(now, pace.next_start)
                s.execute(update(ProviderPace).where(col(ProviderPace.service) == service).values(next_start=start + 60.0 / rpm))
                delay = start - now
            s.commit()
            return slot, delay

    def _free(self, token: SlotToken) -> None:
        with session(self.engine) as s:
            s.execute(update(ProviderSlot).where(
                col(ProviderSlot.service) == token.service, col(ProviderSlot.slot) == token.slot, col(ProviderSlot.holder) == self.holder)
                .values(holder="", lease_until=0.0))
            s.commit()


class DatabaseHealth:
    """Breaker state in ``provider_health``; reads are cached for :data:`HEALTH_CACHE_S`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cache: dict[str, tuple[float, float]] = {}  # service -> (read at, open_until)

    def open_until(self, service: str) -> float:
        now = time.monotonic()
        cached = self._cache.get(service)
        if cached is not None and now - cached[0] < HEALTH_CACHE_S:
            return cached[1]
        with session(self.engine) as s:
            until = s.exec(select(ProviderHealth.open_until).where(ProviderHealth.service == service)).first() or 0.0
        self._cache[service] = (now, until)
        return until

    def opened(self, service: str, until: float, reason: str) -> None:
        self._write(service, until, reason[:500])

    def closed(self, service: str) -> None:
        self._write(service, 0.0, "")

    def _write(self, service: str, until: float, reason: str) -> None:
        with session(self.engine) as s:
            s.execute(insert_or_ignore(self.engine.dialect.name, ProviderHealth).values(service=service, open_until=0.0, reason=""))
            s.execute(update(ProviderHealth).where(col(ProviderHealth.service) == service).values(open_until=until, reason=reason))
            s.commit()
        self._cache.pop(service, None)
