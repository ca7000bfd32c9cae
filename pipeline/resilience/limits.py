"""Per-provider rate limits: how many calls at once, how many per minute, and when to pause.

- ``max_concurrency`` calls in flight at most. On a 429 the limit is cut to the calls the
  service was serving at that moment (at least one less, not below 1); after ``grow_after``
  successes in a row it grows back by one, up to the configured maximum.
- ``requests_per_minute`` (0 = no limit): calls start no closer than 60/rpm seconds apart, so
  a burst cannot spend a minute's allowance at once.
- A ``Retry-After`` (or ``retry-after-ms`` / ``RetryInfo``) pauses the whole provider: no call
  to it starts before that moment, whichever prompt it is for.

A limiter lives inside one event loop (one run): plain bookkeeping, a heap of waiting futures
and at most one timer, never a thread.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.config import defaults_from, from_table
from pipeline.errors import ConfigError


@dataclass(frozen=True)
@defaults_from("resilience", "limits")
class LimitSettings:
    max_concurrency: int
    requests_per_minute: float
    grow_after: int

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "LimitSettings":
        limits = from_table(cls, values)
        if limits.max_concurrency < 1:
            raise ConfigError(f"limits.max_concurrency must be at least 1, not {limits.max_concurrency}")
        return limits


class RateLimiter:
    """Hands out a provider's call slots: within the limits, in priority order, then first come first served.

    Priority lets work that is further along go first (a prompt's second generation before a new
    prompt's first), so prompts finish sooner and the end of a run does not trail off with
    half-done prompts while slots sit idle.
    """

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
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
        try:
            yield
        finally:
            self._release()

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
            if self.in_flight >= self.limit:
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

    def succeeded(self) -> None:
        self._successes += 1
        if self.limit < self.settings.max_concurrency and self._successes >= self.settings.grow_after:
            self.limit += 1
            self._successes = 0
            self._dispatch()
