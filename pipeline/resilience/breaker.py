"""Circuit breakers: stop sending work to a provider that keeps failing, and probe it back.

One breaker per service (``kind/name``) for the whole process, so a provider found dead by one
run is skipped by the next until its cool-down passes. States:

- ``closed``: calls flow. It opens after ``failure_threshold`` consecutive failures, or when
  at least ``min_calls`` of the last ``window`` calls were made and ``failure_rate`` of them failed.
- ``open``: :meth:`CircuitBreaker.allow` refuses at once, so the chain moves to the next provider.
- ``half_open``: after ``cooldown_s``, exactly one probe call is let through; success closes
  the breaker, failure opens it for another cool-down.

Only failures that say something about the provider's health count: server errors, timeouts,
connection errors, malformed answers, refused keys and unknown models. A content block or a bad
request is the request's fault; a 429 is back-pressure, handled by the rate limiter.
Transitions go to the log and to whoever listens (the runner writes them to ``breaker_event``).

Worker processes sharing a database share their breakers too (:class:`SharedHealth`, given to
the :data:`board`): a breaker that opens in one process opens the service for all of them until
its cool-down ends; then the process that opened it sends the probe, and the others wait for it
(they stay refused while the opener holds the shared state open).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.config import defaults_from, from_table
from pipeline.errors import ProviderError

log = logging.getLogger("pipeline.resilience.breaker")
HEALTH_KINDS = frozenset({"server", "timeout", "connection", "malformed", "auth", "not_found", "internal"})


def counts_against_health(error: ProviderError) -> bool:
    return error.kind in HEALTH_KINDS


@dataclass(frozen=True)
@defaults_from("resilience", "breaker")
class BreakerSettings:
    failure_threshold: int
    window: int
    min_calls: int
    failure_rate: float
    cooldown_s: float

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "BreakerSettings":
        return from_table(cls, values)


@dataclass(frozen=True)
class Transition:
    service: str  # "providers/fal"
    state: str  # closed | open | half_open
    reason: str
    failures: int  # consecutive failures when it happened


Listener = Callable[[Transition], None]


class SharedHealth(Protocol):
    """Breaker state all processes see (implemented over the database by the runs)."""

    def open_until(self, service: str) -> float:
        """Unix time until which some process holds the service's breaker open (0: closed); may be a second stale."""
        ...

    def opened(self, service: str, until: float, reason: str) -> None: ...

    def closed(self, service: str) -> None: ...


class CircuitBreaker:
    def __init__(self, service: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic,
                 shared: SharedHealth | None = None) -> None:
        self.service = service
        self.shared = shared
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self.state = "closed"
        self.consecutive_failures = 0
        self._recent: deque[bool] = deque(maxlen=max(1, settings.window))  # True = failure
        self._opened_at = 0.0
        self._probe_out = False
        self.listeners: list[Listener] = []

    # ---- asking ----------------------------------------------------------------------------
    def _opened_elsewhere(self) -> bool:
        """Another process holds this service's breaker open (only asked while this one is closed)."""
        if self.shared is None:
            return False
        try:
            return self.shared.open_until(self.service) > time.time()
        except Exception:  # the shared state cannot be read: decide on this process's own breaker
            log.exception("shared breaker state of %s unreadable", self.service)
            return False

    def is_open(self) -> bool:
        """Refusing right now (a cool-down not over yet, or a probe already out)."""
        if self.state == "closed" and self._opened_elsewhere():
            return True
        with self._lock:
            if self.state == "open":
                return self._clock() - self._opened_at < self.settings.cooldown_s
            return self.state == "half_open" and self._probe_out

    def allow(self) -> bool:
        """May a call go now? In half-open state this hands out the single probe."""
        if self.state == "closed" and self._opened_elsewhere():
            return False
        with self._lock:
            if self.state == "closed":
                return True
            if self.state == "open":
                if self._clock() - self._opened_at < self.settings.cooldown_s:
                    return False
                transition = self._move("half_open", f"cool-down of {self.settings.cooldown_s:g} s over; one probe call allowed")
                self._probe_out = True
            elif self._probe_out:
                return False
            else:
                self._probe_out = True
                transition = None
        if transition:
            self._announce(transition)
        return True

    def seconds_until_probe(self) -> float:
        with self._lock:
            if self.state != "open":
                return 0.0
            return max(0.0, self.settings.cooldown_s - (self._clock() - self._opened_at))

    # ---- telling -----------------------------------------------------------------------------
    def record_success(self) -> None:
        with self._lock:
            if self.state == "open":
                return  # a call let through before it opened: only the half-open probe may close it
            self._recent.append(False)
            self.consecutive_failures = 0
            self._probe_out = False
            transition = self._move("closed", "probe call succeeded") if self.state == "half_open" else None
        if transition:
            self._announce(transition)

    def record_failure(self, error: ProviderError) -> None:
        if not counts_against_health(error):
            self.release()
            return
        with self._lock:
            self._recent.append(True)
            self.consecutive_failures += 1
            self._probe_out = False
            transition = None
            s = self.settings
            if self.state == "half_open":
                transition = self._open(f"probe call failed ({error.kind}: {str(error)[:200]})")
            elif self.state == "closed":
                failed = sum(self._recent)
                if self.consecutive_failures >= s.failure_threshold:
                    transition = self._open(f"{self.consecutive_failures} consecutive failures; last: {error.kind}: {str(error)[:200]}")
                elif len(self._recent) >= s.min_calls and failed / len(self._recent) >= s.failure_rate:
                    transition = self._open(f"{failed} of the last {len(self._recent)} calls failed; last: {error.kind}: {str(error)[:200]}")
        if transition:
            self._announce(transition)

    def release(self) -> None:
        """A call ended without a verdict on health (cancelled, blocked, bad request): free the probe."""
        with self._lock:
            self._probe_out = False

    # ---- internals ---------------------------------------------------------------------------
    def _open(self, reason: str) -> Transition:
        self._opened_at = self._clock()
        self._recent.clear()
        return self._move("open", reason)

    def _move(self, state: str, reason: str) -> Transition:
        self.state = state
        return Transition(self.service, state, reason, self.consecutive_failures)

    def _announce(self, t: Transition) -> None:
        level = logging.WARNING if t.state == "open" else logging.INFO
        log.log(level, "circuit breaker %s %s: %s", t.service, t.state.replace("_", "-"), t.reason)
        try:
            if self.shared is not None and t.state in ("open", "half_open"):  # half-open: the others wait for the probe
                self.shared.opened(t.service, time.time() + self.settings.cooldown_s, t.reason)
            elif self.shared is not None and t.state == "closed":
                self.shared.closed(t.service)
        except Exception:  # the other processes learn of it later (their own failures): the call path goes on
            log.exception("could not share the state of breaker %s", t.service)
        for listener in list(self.listeners):
            try:
                listener(t)
            except Exception:  # a listener's failure must not break the call path
                log.exception("breaker listener failed")


class BreakerBoard:
    """The process's breakers by service, created on first use with that service's settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}
        self.shared: SharedHealth | None = None

    def get(self, service: str, settings: BreakerSettings) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(service)
            if breaker is None or breaker.settings != settings:
                breaker = self._breakers[service] = CircuitBreaker(service, settings, shared=self.shared)
            return breaker

    def share(self, health: SharedHealth | None) -> None:
        """From now on, this process's breakers open and close together with other processes'."""
        with self._lock:
            self.shared = health
            for breaker in self._breakers.values():
                breaker.shared = health

    def reset(self) -> None:
        with self._lock:
            self._breakers.clear()
            self.shared = None


board = BreakerBoard()
