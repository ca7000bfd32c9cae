"""Per-provider rate limits: how many calls at once, how many per minute, and when to pause.

- ``max_concurrency`` calls in flight at most. On a 429 the limit is cut to the calls the
  service was serving at that moment (at least one less, not below 1); after ``grow_after``
  successes in a row it grows back by one, up to the configured maximum.
- A service that queues requests on its side may ask for a few calls beyond ``max_concurrency``
  (``ahead``, read at every hand-out), so a slot it frees finds the next request already there.
- ``requests_per_minute`` (0 = no limit): calls start no closer than 60/rpm seconds apart, so
  a burst cannot spend a minute's allowance at once.
- A ``Retry-After`` (or ``retry-after-ms`` / ``RetryInfo``) pauses the whole provider: no call
  to it starts before that moment, whichever prompt it is for.

A limiter lives inside one event loop (one run): plain bookkeeping, a heap of waiting futures
and at most one timer, never a thread. Worker processes sharing a database (``python -m pipeline
worker``) also give each limiter a :class:`SharedLimits`, so ``max_concurrency``,
``requests_per_minute`` and a ``Retry-After`` pause hold for all of them together, not per process.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.components import when_service_done
from pipeline.config import defaults_from, from_table
from pipeline.errors import ConfigError


@dataclass(frozen=True)
@defaults_from("resilience", "limits")
class LimitSettings:
    max_concurrency: int
    requests_per_minute: float
    grow_after: int
    quota_reserve: float  # slow down once a service reports less than this share of its allowance left (pipeline.quotas)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "LimitSettings":
        limits = from_table(cls, values)
        if limits.max_concurrency < 1:
            raise ConfigError(f"limits.max_concurrency must be at least 1, not {limits.max_concurrency}")
        if not 0 <= limits.quota_reserve < 1:
            raise ConfigError(f"limits.quota_reserve must be from 0 up to (not including) 1, not {limits.quota_reserve}")
        return limits


class SharedLimits(Protocol):
    """A service's limits held by every process at once (implemented over the database by the runs)."""

    async def acquire(self, service: str, max_concurrency: int, requests_per_minute: float) -> object:
        """Wait for one of the service's ``max_concurrency`` shared slots, its shared pause and its
        pacing; return a token for :meth:`release`."""
        ...

    async def release(self, token: object) -> None: ...

    def release_soon(self, token: object) -> None:
        """:meth:`release`, called from synchronous code: done now or by a task of its own."""
        ...

    def pause(self, service: str, seconds: float) -> None:
        """No process starts a call to ``service`` for ``seconds`` (a ``Retry-After``)."""
        ...


class RateLimiter:
    """Hands out a provider's call slots: within the limits, in priority order, then first come first served.

    Priority lets the work with more left after it go first (a prompt's first generation before
    another's second): at the end of a run what is left are last steps, side by side, not a first
    generation whose second must still follow it while the other slots sit idle. (Second
    generations first left the last first ones to start latest: ``bench/throughput.py`` spans.)
    """

    def __init__(self, settings: LimitSettings, *, shared: SharedLimits | None = None, service: str = "") -> None:
        self.settings = settings
        self.shared, self.service = shared, service
        self.ahead: Callable[[int], int] | None = None  # max_concurrency -> calls the service asks for beyond it (submitting ahead)
        self.limit = settings.max_concurrency  # the adaptive concurrency in force
        self.in_flight = 0
        self.paused_until = 0.0  # time.monotonic() before which no call starts
        self._next_start = 0.0
        self._successes = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap: (priority, arrival, future)
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return sum(not f.done() for _, _, f in self._waiters)

    @asynccontextmanager
    async def slot(self, priority: int = 0) -> AsyncIterator[None]:
        """Hold one of the provider's slots for the duration of a call (lower ``priority`` goes first)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._arrivals), future))
        self._dispatch()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release()  # the slot was granted as the wait was cancelled: give it back
            raise
        token: object = None
        held = True

        def service_done() -> None:  # the service has finished the job: its slots are free before the result is fetched
            nonlocal held, token
            if held:
                held = False
                self._release()
            if token is not None and self.shared is not None:
                shared, token = token, None
                self.shared.release_soon(shared)

        try:
            if self.shared is not None:  # and one of the slots all processes share
                token = await self.shared.acquire(self.service, self.settings.max_concurrency, self.settings.requests_per_minute)
            with when_service_done(service_done):
                yield
        finally:
            if held:
                held = False
                self._release()
            if token is not None and self.shared is not None:
                await self.shared.release(token)

    def _release(self) -> None:
        self.in_flight -= 1
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant slots to the waiters at the front while the limits allow; wake up later for a pause."""
        while self._waiters:
            _, _, future = self._waiters[0]
            if future.done():  # cancelled while waiting
                heapq.heappop(self._waiters)
                continue
            if self.in_flight >= self.limit + self._extra():
                return
            now = time.monotonic()
            wait = max(self.paused_until, self._next_start) - now
            if wait > 0:
                if self._timer is None or self._timer.when() > asyncio.get_running_loop().time() + wait + 0.001:
                    if self._timer is not None:
                        self._timer.cancel()
                    self._timer = asyncio.get_running_loop().call_later(wait, self._wake)
                return
            heapq.heappop(self._waiters)
            self.in_flight += 1
            rpm = self.settings.requests_per_minute
            if rpm > 0:
                self._next_start = max(now, self._next_start) + 60.0 / rpm
            future.set_result(None)

    def _extra(self) -> int:
        """Slots beyond the limit for a service that queues our requests on its side (submitting
        ahead, pipeline.services.ahead): only while no 429 has cut the limit, and not across processes."""
        if self.ahead is None or self.shared is not None or self.limit < self.settings.max_concurrency:
            return 0
        return max(0, self.ahead(self.settings.max_concurrency))

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429: cut the concurrency and pause the provider for as long as it asked.

        The cut is to the number of our calls the service was still serving when it refused
        (that is what it showed it can take), and at least one below the limit before; with
        nothing else in flight, to 1. A concurrency-capped service thus settles at its cap
        instead of the sawtooth a halving would give.
        """
        self.limit = max(1, min(self.limit - 1, self.in_flight))
        self._successes = 0
        if retry_after:
            self.pause(retry_after)

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        if self.shared is not None:
            self.shared.pause(self.service, seconds)

    def succeeded(self) -> None:
        self._successes += 1
        if self.limit < self.settings.max_concurrency and self._successes >= self.settings.grow_after:
            self.limit += 1
            self._successes = 0
            self._dispatch()
