"""The step ledger: what one prompt's calls cost, and how each step is written down.

A prompt job sends every call through :meth:`StepLedger.call` and writes every result through
:meth:`StepLedger.record`, so the bookkeeping lives here once:

- the budget: the reservation wraps the chain from outside. Each attempt reserves its own
  service's table price before it is sent (a fallback may cost more than the service before
  it, and must not pass the cap), a failed attempt releases its share, and the served call's
  share is settled with the real cost once its record is committed. The chain never sees it.
- the call log: every attempt that did not serve (retried, error, blocked, cancelled) is one
  ``provider_call`` row as it happens; the served attempt is one row written with its step's
  result, under the step key that lets a resumed run recognise a call already paid for.
- the cost: the service's own figure, or the price table's when it reports none, added to the
  prompt's total.
- the commit: the prompt's own row (status, cost, best score) is kept in memory, since the job
  is its only writer, and rides along with each step's commit when it changed, so a step's
  result and the prompt's totals land in one transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session

from pipeline import prices
from pipeline.components import Component
from pipeline.errors import ChainFailed, ProviderError
from pipeline.resilience.budget import Budget
from pipeline.resilience.routing import Attempt, Served, ServiceChain
from pipeline.store.db import session
from pipeline.store.models import ProviderCall, RunItem, utcnow
from pipeline.store.statements import append, update_row

log = logging.getLogger("pipeline.runs.ledger")
C = TypeVar("C", bound=Component)
T = TypeVar("T")
ITEM_FIELDS = ("status", "error_kind", "error_message", "started_at", "finished_at", "cost_usd", "best_score", "final_iteration",
               "stop_reason")


def step_key(run_id: int, item_id: int, number: int, operation: str) -> str:
    return f"run{run_id}/item{item_id}/it{number}/{operation}"


def table_price(component: Component, width: int = 0, height: int = 0) -> float | None:
    """What a call to ``component`` costs by the price table: the budget's estimate before it is sent."""
    return prices.table_cost(component.settings, component.model, width, height)


class Reservation:
    """The budget held for one call along a chain, one attempt at a time (attempts of one call
    never overlap): reserved at the attempt's own service's estimate, released if it fails,
    settled with the real cost once the served call is recorded."""

    def __init__(self, budget: Budget, operation: str, estimate: Callable[[Any], float | None]) -> None:
        self.budget, self.operation, self.estimate = budget, operation, estimate
        self.usd = 0.0

    def around(self, send: Callable[[C], Awaitable[T]]) -> Callable[[C], Awaitable[T]]:
        async def attempt(component: C) -> T:
            usd = self.estimate(component) or 0.0
            self.budget.reserve(usd, f"{self.operation} on {component.name}")
            try:
                value = await send(component)
            except BaseException:
                self.budget.release(usd)
                raise
            self.usd = usd
            return value

        return attempt

    def settle(self, actual_usd: float | None) -> None:
        self.budget.settle(self.usd, actual_usd)
        self.usd = 0.0

    def release(self) -> None:
        self.budget.release(self.usd)
        self.usd = 0.0


@dataclass
class Call(Generic[C, T]):
    """A served call not yet recorded: what the chain served, its step key, and the budget held for it."""

    served: Served[C, T]
    operation: str
    key: str
    iteration_id: int | None
    reservation: Reservation

    @property
    def value(self) -> T:
        return self.served.value

    @property
    def component(self) -> C:
        return self.served.component


class StepLedger:
    def __init__(self, engine: Engine, run_id: int, item: RunItem, budget: Budget, label: str) -> None:
        self.engine, self.run_id, self.item, self.budget = engine, run_id, item, budget
        self.label = label  # the prompt's id, for log lines
        self.dirty = False  # the prompt's row changed since the last commit
        self.last_failed = ""  # the service whose attempt failed last, for messages

    # ---- calls --------------------------------------------------------------------------------
    async def call(self, chain: ServiceChain[C], operation: str, number: int, send: Callable[[C], Awaitable[T]], *,
                   estimate: Callable[[C], float | None] = table_price, iteration_id: int | None = None, step: str = "",
                   refuse: Callable[[C], str] | None = None) -> Call[C, T]:
        """One budgeted call along ``chain``, every attempt that does not serve logged as it
        happens. Earlier iterations go first when a service is busy (each has another to follow it), so
        the end of a run holds last steps side by side rather than chains of two."""
        key = step_key(self.run_id, self.item.id or 0, number, step or operation)
        reservation = Reservation(self.budget, operation, estimate)

        def on_attempt(a: Attempt) -> None:
            self._log_attempt(a, operation, key, iteration_id)

        served = await chain.call(reservation.around(send), on_attempt, priority=number, refuse=refuse)
        return Call(served, operation, key, iteration_id, reservation)

    def _log_attempt(self, a: Attempt, operation: str, key: str, iteration_id: int | None) -> None:
        started = utcnow() - timedelta(milliseconds=a.latency_ms)
        with session(self.engine) as s:
            append(s, ProviderCall, self._call_row(a.component, operation, key, started, a.latency_ms, a.outcome,
                                                   error=a.error, iteration_id=iteration_id, attempt=a.number))
            s.commit()
        self.last_failed = a.component.name
        log.warning("%s: %s %s attempt %d %s: %s", self.label, a.component.name, operation, a.number, a.outcome, a.error)

    def failure(self, role: str, e: ProviderError) -> str:
        """Why a call failed, naming the service that failed last (a chain's error names them all)."""
        return str(e) if isinstance(e, ChainFailed) else f"{role} {self.last_failed} failed: {e}".lstrip()

    @staticmethod
    def cost(call: Call[Any, Any], reported: float | None, model: str = "", width: int = 0, height: int = 0) -> float | None:
        """The service's own figure, else the price table's for the model that served."""
        if reported is not None:
            return reported
        component = call.component
        return prices.table_cost(component.settings, model or component.model, width, height)

    # ---- records ------------------------------------------------------------------------------
    @contextmanager
    def record(self, call: Call[Any, Any], cost: float | None, *, http_status: int | None = None,
               model: str = "") -> Iterator[Session]:
        """Write a served call's step: the caller adds its rows to the yielded session; then its
        call-log row, the prompt's cost, one commit with the prompt's row, and the budget settled."""
        try:
            with session(self.engine) as s:
                yield s
                started = utcnow() - timedelta(milliseconds=call.served.latency_ms)
                append(s, ProviderCall, self._call_row(
                    call.component, call.operation, call.key, started, call.served.latency_ms, "ok", cost=cost,
                    http_status=http_status, iteration_id=call.iteration_id, attempt=call.served.attempts, model=model))
                self.add_cost(cost)
                self.commit(s)
        except BaseException:
            call.reservation.release()
            raise
        call.reservation.settle(cost)

    def record_call(self, call: Call[Any, Any], cost: float | None) -> None:
        """Record a served call whose step stores nothing else (a decomposition, a rewrite to comply)."""
        with self.record(call, cost):
            pass

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A unit of work that is not a call (a new iteration row, a status): committed with the prompt's row."""
        with session(self.engine) as s:
            yield s
            self.commit(s)

    def touch(self) -> None:
        """The prompt's row changed: the next commit carries it."""
        self.dirty = True

    def save(self) -> None:
        """Commit the prompt's row now."""
        with self.transaction():
            pass

    def add_cost(self, cost: float | None) -> None:
        if cost:
            self.item.cost_usd += cost
            self.dirty = True

    def commit(self, s: Session) -> None:
        """Commit ``s`` together with the prompt's own row if it changed (one UPDATE of the
        in-memory copy keeps it exact: the job is its only writer)."""
        if not self.dirty:
            s.commit()
            return
        update_row(s, self.item, *ITEM_FIELDS)
        s.commit()
        self.dirty = False  # only once committed: a failed commit leaves it for the next one

    def _call_row(self, component: Component, operation: str, key: str, started: Any, latency: float, outcome: str, *,
                  cost: float | None = None, http_status: int | None = None, error: ProviderError | None = None,
                  iteration_id: int | None = None, attempt: int = 1, model: str = "") -> dict[str, Any]:
        """The values of one call-log row (append-only, so no object is built)."""
        return dict(
            run_id=self.run_id, iteration_id=iteration_id, step_key=key, provider=component.name,
            model=model or component.model, operation=operation, started_at=started, latency_ms=latency, outcome=outcome,
            http_status=error.http_status if error else http_status, error_kind=error.kind if error else "",
            error_message=str(error)[:2000] if error else "", attempt=attempt, cost_usd=cost,
        )
