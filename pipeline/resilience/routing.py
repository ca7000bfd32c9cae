"""Calling a chain of services: retries, circuit breakers, rate limits, fallback and pooling.

A :class:`ServiceChain` wraps the ordered services a run may use for one role (its image
providers, or its judges, or its refiners). :meth:`ServiceChain.call` sends one request:

1. It picks the order: the run's chain order (``fallback`` routing), or, in ``pool`` routing,
   healthy services by expected wait (recent latency x (calls in flight + waiting + 1)) with the
   rest behind them.
2. For each service: skip it at once if its breaker is open; else try it up to
   ``max_attempts`` times under its rate limiter, waiting by the retry policy between attempts.
3. A service that fails for good (breaker open, refused key, unknown model, an answer over its
   size cap, an image that cannot be used, a URL it may not fetch, or retries exhausted) is
   skipped with the reason and the next one is tried. A content block or a non-retryable
   request error (400, 422) ends the call: another service would be asked the same thing.

Each attempt has an overall deadline, the service's ``timeout_s`` plus ``[resilience.deadline]
grace_s`` (time for its own timeout handling, e.g. cancelling a queued request): a service that
trickles its answer a byte at a time defeats per-read timeouts, not this. An attempt cancelled
from outside (Cancel, Ctrl-C) is reported as ``cancelled`` and the cancellation goes on at once.

Every attempt is reported to ``on_attempt`` (the runner logs it in ``provider_call``); the
result says which service served and why the ones before it were skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pipeline import quotas
from pipeline.components import Component
from pipeline.config import Settings, defaults_from, from_table
from pipeline.errors import ChainFailed, ContentBlocked, ProviderError, Skip
from pipeline.resilience.breaker import BreakerSettings, CircuitBreaker, board
from pipeline.resilience.limits import LimitSettings, RateLimiter, SharedLimits
from pipeline.resilience.retry import RetryPolicy

log = logging.getLogger("pipeline.resilience.routing")
C = TypeVar("C", bound=Component)
T = TypeVar("T")
FALLBACK_KINDS = frozenset({"auth", "not_found", "too_large", "bad_image", "refused"})
ROUTING_MODES = ("fallback", "pool")


@dataclass
class Served(Generic[C, T]):
    value: T
    component: C
    attempts: int  # on the serving service
    skipped: list[Skip] = field(default_factory=list)
    latency_ms: float = 0.0  # of the successful attempt

    def routing(self) -> dict[str, object]:
        """What the iteration, evaluation or refinement records about how it was served."""
        return {"served_by": self.component.name, "attempts": self.attempts, "skipped": [s.as_dict() for s in self.skipped]}


@dataclass(frozen=True)
class Attempt:
    """One failed call attempt, for the call log. ``outcome``: retried | error | blocked | cancelled."""

    component: Component
    number: int
    outcome: str
    latency_ms: float
    error: ProviderError | None = None


class Member(Generic[C]):
    """One service of a chain with its health: breaker, rate limiter and recent latency."""

    def __init__(self, component: C, breaker: CircuitBreaker, limiter: RateLimiter, policy: RetryPolicy,
                 grace_s: float = 5.0) -> None:
        self.component = component
        self.breaker = breaker
        self.limiter = limiter
        limiter.ahead = getattr(component, "ahead_slots", None)  # a service that queues may take calls beyond the limit
        self.policy = policy
        self.latency_ewma_ms: float | None = None
        timeout = getattr(component, "timeout_s", None)  # networked services have one; local ones run unbounded
        self.timeout_s: float | None = float(timeout) if timeout else None
        self.grace_s = grace_s

    @property
    def deadline_s(self) -> float | None:
        """How long one attempt may take in all, body included."""
        return None if self.timeout_s is None else self.timeout_s + self.grace_s

    def overdue(self) -> ProviderError:
        return ProviderError(f"{self.name} did not finish within {self.deadline_s:g} s (timeout_s = {self.timeout_s:g} plus "
                             f"{self.grace_s:g} s grace); the call was abandoned", kind="timeout", retryable=True)

    @property
    def name(self) -> str:
        return self.component.name

    def observe_latency(self, ms: float) -> None:
        self.latency_ewma_ms = ms if self.latency_ewma_ms is None else 0.8 * self.latency_ewma_ms + 0.2 * ms

    def expected_wait(self, fallback_ms: float) -> float:
        return (self.latency_ewma_ms or fallback_ms) * (self.limiter.in_flight + self.limiter.waiting + 1) / max(1, self.limiter.limit)


@dataclass(frozen=True)
@defaults_from("resilience", "deadline")
class DeadlineSettings:
    grace_s: float  # one attempt may take the service's timeout_s plus this, body included


def service_settings(settings: Settings, kind: str, name: str, table: str) -> dict[str, object]:
    """``[resilience.<table>]`` with ``[<kind>.<name>.<table>]`` over it (e.g. a provider's own limits)."""
    merged = dict(settings.section("resilience", table))
    merged.update(settings.component(kind, name).get(table, {}) or {})
    return merged


def check_service_settings(settings: Settings, kind: str, name: str) -> None:
    """Build a service's retry, limit, breaker and deadline settings once, so that a bad value is a
    :class:`ConfigError` before a run is created, not a failed run after."""
    BreakerSettings.from_settings(service_settings(settings, kind, name, "breaker"))
    LimitSettings.from_settings(service_settings(settings, kind, name, "limits"))
    RetryPolicy.from_settings(service_settings(settings, kind, name, "retry"))
    from_table(DeadlineSettings, service_settings(settings, kind, name, "deadline"))


def member_for(settings: Settings, component: C, shared: SharedLimits | None = None) -> Member[C]:
    """``shared``: the limits every worker process holds together (``python -m pipeline worker``)."""
    kind, name = component.kind, component.name
    return Member(
        component,
        board.get(f"{kind}/{name}", BreakerSettings.from_settings(service_settings(settings, kind, name, "breaker"))),
        RateLimiter(LimitSettings.from_settings(service_settings(settings, kind, name, "limits")), shared=shared, service=f"{kind}/{name}"),
        RetryPolicy.from_settings(service_settings(settings, kind, name, "retry")),
        from_table(DeadlineSettings, service_settings(settings, kind, name, "deadline")).grace_s,
    )


class ServiceChain(Generic[C]):
    def __init__(self, role: str, members: Sequence[Member[C]], *, mode: str = "fallback", rng: random.Random | None = None) -> None:
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {', '.join(ROUTING_MODES)}, not {mode!r}")
        self.role = role
        self.members = list(members)
        self.mode = mode
        self.rng = rng or random.Random()

    @property
    def primary(self) -> C:
        return self.members[0].component

    def order(self) -> list[Member[C]]:
        if self.mode == "fallback" or len(self.members) == 1:
            return list(self.members)
        known = [m.latency_ewma_ms for m in self.members if m.latency_ewma_ms is not None]
        typical = min(known) if known else 1.0  # an unmeasured service is tried as if it were the fastest
        healthy = [m for m in self.members if not m.breaker.is_open()]
        ranked = sorted(healthy, key=lambda m: (m.expected_wait(typical), self.members.index(m)))
        return ranked + [m for m in self.members if m not in ranked]

    async def call(self, send: Callable[[C], Awaitable[T]], on_attempt: Callable[[Attempt], None] = lambda a: None, *,
                   priority: int = 0, refuse: Callable[[C], str] | None = None) -> Served[C, T]:
        """Send one request along the chain; ``send(component)`` makes one attempt, and every
        failed attempt is reported to ``on_attempt`` (the successful one is the caller's to log).
        Lower ``priority`` gets a busy service's next free slot first. ``refuse(component)``
        says why a service cannot take this request at all (its capabilities), or "": such a
        service is skipped with that reason, never asked."""
        skipped: list[Skip] = []
        last: ProviderError | None = None
        for member in self.order():
            unfit = refuse(member.component) if refuse is not None else ""
            if unfit:
                skipped.append(Skip(member.name, unfit))
                log.info("%s %s skipped: %s", self.role, member.name, unfit)
                continue
            if member.breaker.is_open():
                skipped.append(Skip(member.name, "circuit breaker open"))
                continue
            try:
                value, attempts, latency = await self._attempts(member, send, on_attempt, priority)
            except ContentBlocked as e:
                e.skipped = list(skipped)
                raise
            except _GiveUp as give_up:
                last = give_up.error
                skipped.append(Skip(member.name, give_up.reason))
                log.warning("%s %s skipped: %s", self.role, member.name, give_up.reason)
                continue
            return Served(value, member.component, attempts, skipped, latency)
        raise ChainFailed(self.role, skipped, last)

    async def _attempts(self, member: Member[C], send: Callable[[C], Awaitable[T]],
                        on_attempt: Callable[[Attempt], None], priority: int) -> tuple[T, int, float]:
        policy = member.policy
        failures = limited = 0  # 429s have their own allowance: waiting them out is normal under load
        for number in itertools.count(1):
            async with member.limiter.slot(priority):
                if not member.breaker.allow():
                    raise _GiveUp("circuit breaker open", None)
                t0 = time.perf_counter()
                try:
                    async with asyncio.timeout(member.deadline_s):
                        value = await send(member.component)
                except ProviderError as e:
                    latency = (time.perf_counter() - t0) * 1000
                    failure = e
                except TimeoutError:  # the deadline passed (the attempt was cancelled by it, not from outside)
                    latency = (time.perf_counter() - t0) * 1000
                    failure = member.overdue()
                except asyncio.CancelledError:  # the run was cancelled or interrupted mid-call: logged as such
                    member.breaker.release()
                    try:
                        on_attempt(Attempt(member.component, number, "cancelled", (time.perf_counter() - t0) * 1000,
                                           ProviderError("the call was in flight when the run stopped", kind="cancelled")))
                    except Exception:  # noqa: BLE001 (recording must not hold the cancellation up)
                        log.exception("%s %s: could not record the cancelled attempt", self.role, member.name)
                    raise
                except BaseException:
                    member.breaker.release()
                    raise
                else:
                    latency = (time.perf_counter() - t0) * 1000
                    member.breaker.record_success()
                    member.limiter.succeeded()
                    ahead = quotas.pause_before_limit(quotas.board.latest(member.name), member.limiter.settings.quota_reserve)
                    if ahead > 0:  # the service says its allowance is nearly spent: slow down before its 429
                        member.limiter.pause(ahead)
                    member.observe_latency(latency)
                    return value, number, latency
            # The attempt failed; the slot is free again while we decide and wait.
            member.breaker.record_failure(failure)
            if failure.kind == "rate_limited" or failure.http_status == 429:
                member.limiter.rate_limited(failure.retry_after)
                limited += 1
                allowance_left = limited < policy.rate_limit_attempts
            else:
                if failure.retry_after:
                    member.limiter.pause(min(failure.retry_after, policy.max_retry_after_s))
                failures += 1
                allowance_left = failures < policy.max_attempts
            retry = policy.retryable(failure)
            delay = policy.delay(failures + limited, failure, self.rng) if retry else None
            again = retry and delay is not None and allowance_left
            outcome = "retried" if again else "blocked" if isinstance(failure, ContentBlocked) else "error"
            on_attempt(Attempt(member.component, number, outcome, latency, failure))
            if again:
                log.info("%s %s attempt %d failed (%s); retrying in %.2f s", self.role, member.name, number, failure.kind, delay)
                await asyncio.sleep(delay or 0.0)
                continue
            if isinstance(failure, ContentBlocked):
                raise failure
            if retry:  # retryable, but out of attempts or asked to wait longer than allowed
                why = (f"asked to wait {failure.retry_after:g} s, over the {policy.max_retry_after_s:g} s allowed"
                       if delay is None else f"{number} attempts failed; last: {failure.kind}")
                raise _GiveUp(why, failure)
            if failure.kind in FALLBACK_KINDS:
                raise _GiveUp(f"{failure.kind}: {str(failure)[:200]}", failure)
            raise failure
        raise AssertionError("unreachable")  # pragma: no cover  (itertools.count never ends)


class _GiveUp(Exception):
    def __init__(self, reason: str, error: ProviderError | None) -> None:
        super().__init__(reason)
        self.reason, self.error = reason, error
