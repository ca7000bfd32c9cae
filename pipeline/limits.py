"""Per-provider rate limits: how many calls at once, how many per minute, and when to pause.

- ``max_concurrency`` calls in flight at most. On a 429 the limit is halved (not below 1);
  after ``grow_after`` successes in a row it grows back by one, up to the configured maximum
  (additive increase, multiplicative decrease, as TCP does).
- ``requests_per_minute`` (0 = no limit): calls start no closer than 60/rpm seconds apart, so
  a burst cannot spend a minute's allowance at once.
- A ``Retry-After`` (or ``retry-after-ms`` / ``RetryInfo``) pauses the whole provider: no call
  to it starts before that moment, whichever prompt it is for.

A limiter lives inside one event loop (one run); it is plain bookkeeping plus an
:class:`asyncio.Condition`, never a thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LimitSettings:
    max_concurrency: int = 8
    requests_per_minute: float = 0.0
    grow_after: int = 10

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "LimitSettings":
        limits = cls(**{k: type(getattr(cls, k))(v) for k, v in values.items() if k in cls.__dataclass_fields__})
        if limits.max_concurrency < 1:
            raise ValueError(f"limits.max_concurrency must be at least 1, not {limits.max_concurrency}")
        return limits


class RateLimiter:
    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self.limit = settings.max_concurrency  # the adaptive concurrency in force
        self.in_flight = 0
        self.waiting = 0
        self.paused_until = 0.0  # time.monotonic() before which no call starts
        self._next_start = 0.0
        self._successes = 0
        self._changed = asyncio.Condition()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the provider's concurrent slots for the duration of a call."""
        self.waiting += 1
        try:
            async with self._changed:
                while True:
                    now = time.monotonic()
                    wait = max(self.paused_until, self._next_start) - now
                    if self.in_flight < self.limit and wait <= 0:
                        break
                    if self.in_flight < self.limit:
                        try:  # a pause or the spacing: sleep it out unless something changes first
                            await asyncio.wait_for(self._changed.wait(), timeout=wait)
                        except TimeoutError:
                            pass
                    else:
                        await self._changed.wait()
                self.in_flight += 1
                rpm = self.settings.requests_per_minute
                if rpm > 0:
                    self._next_start = max(now, self._next_start) + 60.0 / rpm
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self.in_flight -= 1
            await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def rate_limited(self, retry_after: float | None) -> None:
        """A 429: halve the concurrency and pause the provider for as long as it asked."""
        self.limit = max(1, self.limit // 2)
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
