"""Provider limits and breakers shared by worker processes, over the database.

:class:`DatabaseLimits` implements :class:`~pipeline.resilience.limits.SharedLimits`: a service's
``max_concurrency`` is that many rows of ``provider_slot``; a call holds one (claimed with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL) under a lease that the worker's heartbeat renews, so a
killed worker's slots come back when the lease runs out. ``provider_pace`` holds the earliest
start of the service's next call (``requests_per_minute``) and a ``Retry-After`` pause, for every
process at once. :class:`DatabaseHealth` implements
:class:`~pipeline.resilience.breaker.SharedHealth` with ``provider_health``.

Within one process a slot goes from one call to the next without the database: a call that
ends hands its slot straight to a call of the same process waiting for one, while the process holds
no more than its share (``max_concurrency`` / the workers holding prompts, counted at each
heartbeat); above its share, or with nobody waiting, the slot goes back to the table for the other
processes. One task per service asks the table for slots while calls wait (several at once), so a
process polls the table once per try, not once per waiting call. Before, every call claimed and
freed a row (two transactions and a thread hop each) and every waiting call polled on its own: one
worker process spent twice the CPU per image of the in-process runner (``bench/throughput.py
--processes 1``, model c at C = 64: 38.5 against ~18 ms). A slot handed on is not checked against a
``Retry-After`` another process saw: this process gets its own 429 and pauses too.

Why rows and not PostgreSQL advisory locks: an advisory lock lives on one connection, so each
call in flight would pin a connection for its whole duration (64 calls, 64 connections per
worker); a row with a lease costs two short statements per call and works on SQLite too.

Times are Unix seconds from each machine's clock: the machines are expected to keep NTP time
(a skew of a second shifts pacing by that much; leases are tens of seconds).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, deque
from dataclasses import dataclass

from sqlalchemy import distinct, or_, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from pipeline.store.db import session
from pipeline.store.models import ProviderHealth, ProviderPace, ProviderSlot, RunItem
from pipeline.store.statements import insert_or_ignore

POLL_MIN_S, POLL_MAX_S = 0.02, 0.1  # waiting for a free slot: back off between these (one claimer per service and
# process asks: a slot another process frees is found within 0.1 s, at ~10 short transactions a second while calls wait)
PACED_POLL_MAX_S = 0.5  # a paced service's calls each ask on their own (their start is set in the table): a slower back-off
HEALTH_CACHE_S = 1.0  # how stale a process's view of another's breaker may be
_jitter = random.Random()  # its own: the global one belongs to whoever else runs in this process


@dataclass(frozen=True)
class SlotToken:
    service: str
    slot: int


class DatabaseLimits:
    def __init__(self, engine: Engine, holder: str, lease_s: float) -> None:
        self.engine, self.holder, self.lease_s = engine, holder, lease_s
        self.peers = 1  # processes holding prompts (this one included), counted at each heartbeat (:meth:`count_peers`)
        self._slots_made: dict[str, int] = {}  # service -> slots known to exist
        self._held: Counter[str] = Counter()  # service -> slots this process holds (its calls in flight)
        self._limit: dict[str, int] = {}  # service -> its max_concurrency, as last asked
        self._waiting: dict[str, deque[asyncio.Future[SlotToken]]] = {}  # calls of this process waiting for a slot
        self._claimers: dict[str, asyncio.Task[None]] = {}  # the one task per service asking the table while calls wait
        self._background: set[asyncio.Task[None]] = set()  # slots being given back to the table (release_soon)

    # ---- SharedLimits ----------------------------------------------------------------------
    async def acquire(self, service: str, max_concurrency: int, requests_per_minute: float) -> object:
        if requests_per_minute > 0:  # paced: each call's start is decided in the table
            return await self._acquire_paced(service, max_concurrency, requests_per_minute)
        self._limit[service] = max_concurrency
        waiter: asyncio.Future[SlotToken] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(service, deque()).append(waiter)
        claimer = self._claimers.get(service)
        if claimer is None or claimer.done():
            self._claimers[service] = asyncio.create_task(self._claim_for_waiters(service))
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted as the wait was cancelled: pass it on
                await self.release(waiter.result())
            raise

    def _share(self, service: str) -> int:
        return math.ceil(self._limit.get(service, 1) / max(1, self.peers))

    def _next_waiter(self, service: str) -> asyncio.Future[SlotToken] | None:
        waiting = self._waiting.get(service)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                return waiter
        return None

    async def _claim_for_waiters(self, service: str) -> None:
        """While calls of this process wait: claim free slots for them (as many as wait, in one
        transaction), else wait and try again, backing off."""
        wait = POLL_MIN_S
        while self._waiting.get(service):
            wanted = sum(not w.done() for w in self._waiting[service])
            if not wanted:
                break
            try:
                slots, delay = await asyncio.to_thread(self._try_claim_many, service, self._limit[service], wanted)
            except Exception as e:  # the database failed (StorageError): each waiting call fails with it, as its own claim would
                while (waiter := self._next_waiter(service)) is not None:
                    waiter.set_exception(e)
                return
            self._held[service] += len(slots)
            for slot in slots:
                waiter = self._next_waiter(service)
                if waiter is None:  # the waiter left meanwhile
                    await asyncio.to_thread(self._free, SlotToken(service, slot))
                    self._held[service] -= 1
                else:
                    waiter.set_result(SlotToken(service, slot))
            if slots:
                wait = POLL_MIN_S
                continue
            await asyncio.sleep(max(delay, wait * _jitter.uniform(0.5, 1.0)))
            wait = min(POLL_MAX_S, wait * 2)

    async def _acquire_paced(self, service: str, max_concurrency: int, requests_per_minute: float) -> object:
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
            wait = min(PACED_POLL_MAX_S, wait * 2)

    async def release(self, token: object) -> None:
        """The call is over: its slot goes to this process's next waiting call while the process holds
        no more than its share, else back to the table."""
        if isinstance(token, SlotToken) and not self._hand_on(token):
            await asyncio.to_thread(self._free, token)
            if token.service in self._limit:
                self._held[token.service] -= 1

    def release_soon(self, token: object) -> None:
        """:meth:`release` from synchronous code (the service reported the job done while its result is
        still to fetch): handed on at once, or given back to the table by a task."""
        if isinstance(token, SlotToken) and not self._hand_on(token):
            task = asyncio.get_running_loop().create_task(self.release(token))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _hand_on(self, token: SlotToken) -> bool:
        """Give the slot to this process's next waiting call, if it holds no more than its share."""
        if token.service in self._limit and self._held[token.service] <= self._share(token.service):
            waiter = self._next_waiter(token.service)
            if waiter is not None:
                waiter.set_result(token)
                return True
        return False

    def count_peers(self) -> None:
        """How many processes hold prompts now (the heartbeat's, on its thread): a process keeps handing
        its slots on to its own calls up to ``max_concurrency`` / that many."""
        with session(self.engine) as s:
            owners = s.exec(select(distinct(col(RunItem.lease_owner))).where(
                col(RunItem.status) == "running", col(RunItem.lease_until) >= time.time(), col(RunItem.lease_owner) != "")).all()
        self.peers = max(1, len(set(owners) | {self.holder}))

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

    def _ensure_slots(self, s: Session, service: str, limit: int) -> None:
        """The service's ``limit`` slot rows (and its pace row) exist, committed."""
        if self._slots_made.get(service, 0) < limit:
            self._ensure_pace(s, service)
            for n in range(limit):
                s.execute(insert_or_ignore(self.engine.dialect.name, ProviderSlot).values(service=service, slot=n, holder="", lease_until=0.0))
            s.commit()
            self._slots_made[service] = limit

    def _try_claim(self, service: str, limit: int, rpm: float) -> tuple[int | None, float]:
        """One transaction: a free slot (or None) and how long to wait (the pause, or the pacing)."""
        now = time.time()
        with session(self.engine) as s:
            self._ensure_slots(s, service, limit)
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

    def _try_claim_many(self, service: str, limit: int, wanted: int) -> tuple[list[int], float]:
        """One transaction: up to ``wanted`` free slots (maybe none), and how long a pause has left."""
        now = time.time()
        with session(self.engine) as s:
            self._ensure_slots(s, service, limit)
            paused_until = s.exec(select(ProviderPace.paused_until).where(ProviderPace.service == service)).first() or 0.0
            if paused_until > now:
                s.rollback()
                return [], paused_until - now
            free = or_(col(ProviderSlot.holder) == "", col(ProviderSlot.lease_until) < now)
            candidates = (select(ProviderSlot.slot).where(ProviderSlot.service == service, col(ProviderSlot.slot) < limit, free)
                          .order_by(col(ProviderSlot.slot)).limit(wanted).with_for_update(skip_locked=True))
            taken = s.execute(update(ProviderSlot).where(col(ProviderSlot.service) == service, col(ProviderSlot.slot).in_(candidates), free)
                              .values(holder=self.holder, lease_until=now + self.lease_s).returning(col(ProviderSlot.slot))).scalars().all()
            s.commit()
            return list(taken), 0.0

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
