"""Figures for the Providers page, read from the call log, the evaluations and the ratings.

Each call-log series is keyed by service *and* operation ("offline · generate"), since one name
can be a provider, a judge and a refiner at once.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy
from sqlalchemy import func
from sqlmodel import Session, col, select

from pipeline.review.decisions import consensus_query
from pipeline.store.models import BreakerEvent, Evaluation, Iteration, ProviderCall, Rating, Run, RunItem, row_id

OUTCOMES = ("ok", "retried", "error", "blocked")
_BUCKETS = [timedelta(minutes=m) for m in (1, 5, 15, 60, 360, 1440, 10080)]


@dataclass(frozen=True)
class Call:
    series: str
    started_at: datetime
    latency_ms: float
    outcome: str
    cost_usd: float


def calls(s: Session, limit: int = 100_000, *, project_id: int | None = None) -> list[Call]:
    """The most recent calls (newest ``limit``; ``project_id``: of that project's runs only), oldest first."""
    query = (sqlalchemy.select(col(ProviderCall.provider), col(ProviderCall.operation), col(ProviderCall.started_at),
                               col(ProviderCall.latency_ms), col(ProviderCall.outcome), col(ProviderCall.cost_usd)))
    if project_id is not None:
        query = query.where(col(ProviderCall.run_id).in_(select(Run.id).where(Run.project_id == project_id)))
    rows = s.execute(  # six columns: sqlmodel's select() types at most four, SQLAlchemy's any number
        query.order_by(col(ProviderCall.started_at).desc()).limit(limit)
    ).all()
    return [Call(f"{p} · {op}", at, lat or 0.0, outcome, cost or 0.0) for p, op, at, lat, outcome, cost in reversed(rows)]


def bucket_width(first: datetime, last: datetime, target: int = 40) -> timedelta:
    """The smallest of 1 min … 1 week that gives at most ``target`` buckets over the span."""
    span = last - first
    return next((b for b in _BUCKETS if span / b <= target), _BUCKETS[-1])


def success_over_time(rows: list[Call]) -> dict[str, list[tuple[datetime, float, int]]]:
    """Per series: (bucket start, share of calls that succeeded, calls) over time."""
    if not rows:
        return {}
    width = bucket_width(rows[0].started_at, rows[-1].started_at)
    origin = rows[0].started_at.replace(second=0, microsecond=0)  # buckets start on whole minutes
    counts: dict[str, dict[datetime, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for c in rows:
        start = origin + width * ((c.started_at - origin) // width)
        cell = counts[c.series][start]
        cell[0] += c.outcome == "ok"
        cell[1] += 1
    return {series: [(t, ok / n, n) for t, (ok, n) in sorted(buckets.items())] for series, buckets in sorted(counts.items())}


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), ``q`` in 0–100."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_percentiles(rows: list[Call]) -> dict[str, tuple[float, float, int]]:
    """Per series: (p50, p95, calls) of successful calls' latency in ms."""
    by: dict[str, list[float]] = defaultdict(list)
    for c in rows:
        if c.outcome == "ok":
            by[c.series].append(c.latency_ms)
    return {k: (percentile(v, 50), percentile(v, 95), len(v)) for k, v in sorted(by.items())}


def outcome_counts(rows: list[Call]) -> dict[str, Counter[str]]:
    by: dict[str, Counter[str]] = defaultdict(Counter)
    for c in rows:
        by[c.series][c.outcome] += 1
    return dict(sorted(by.items()))


@dataclass(frozen=True)
class RunCost:
    run_id: int
    name: str
    cost_usd: float
    approved: int

    @property
    def per_approved(self) -> float | None:
        return self.cost_usd / self.approved if self.approved else None


def cost_by_run(s: Session, limit: int = 30, rule: str = "latest", *, project_id: int | None = None) -> list[RunCost]:
    """Cost per run and per image approved (the decision in force under ``rule``; ``project_id``: its runs only)."""
    newest = select(Run).order_by(col(Run.id).desc()).limit(limit)
    runs = list(s.exec(newest.where(Run.project_id == project_id) if project_id is not None else newest))
    ids = [r.id for r in runs]
    costs = dict(s.exec(select(ProviderCall.run_id, func.coalesce(func.sum(ProviderCall.cost_usd), 0.0))
                        .where(col(ProviderCall.run_id).in_(ids)).group_by(col(ProviderCall.run_id))).all())
    consensus = consensus_query(rule, 0)
    approved = dict(s.exec(
        select(RunItem.run_id, func.count()).select_from(Iteration).join(RunItem, col(RunItem.id) == Iteration.run_item_id)
        .join(consensus, consensus.c.iteration_id == Iteration.id)
        .where(col(RunItem.run_id).in_(ids), Iteration.status == "ok", consensus.c.decision == "approved").group_by(col(RunItem.run_id))
    ).all())
    return [RunCost(row_id(r), r.name, float(costs.get(r.id) or 0.0), approved.get(row_id(r), 0)) for r in reversed(runs)]


@dataclass(frozen=True)
class Scored:
    iteration: int
    provider: str
    score: float


def scores(s: Session) -> list[Scored]:
    rows = s.exec(select(Iteration.number, Iteration.provider, Evaluation.overall_score)
                  .join(Evaluation, col(Evaluation.iteration_id) == Iteration.id)).all()
    return [Scored(n, p, sc) for n, p, sc in rows]


def stars_against_scores(s: Session) -> list[tuple[float, int, str]]:
    """(judge score, stars, reviewer) for every starred, judged iteration."""
    rows = s.exec(select(Evaluation.overall_score, Rating.stars, Rating.reviewer)
                  .join(Rating, col(Rating.iteration_id) == Evaluation.iteration_id).where(col(Rating.stars).is_not(None))).all()
    return [(sc, st, rv) for sc, st, rv in rows if st is not None]  # the query keeps starred rows only


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Rank correlation of judge scores and stars (ties averaged); None when undefined."""
    if len(xs) < 3:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx, vy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return cov / math.sqrt(vx * vy) if vx and vy else None


@dataclass(frozen=True)
class BreakerState:
    service: str  # "providers/fal"
    state: str  # closed | open | half_open
    since: datetime
    reason: str
    transitions: int


def breaker_states(s: Session) -> list[BreakerState]:
    """Each service's circuit breaker as last recorded (services that never tripped are not listed)."""
    latest = (select(BreakerEvent.service, func.max(BreakerEvent.id).label("last"), func.count().label("n"))
              .group_by(BreakerEvent.service).subquery())
    rows = s.exec(select(BreakerEvent, latest.c.n).join(latest, latest.c.last == BreakerEvent.id).order_by(BreakerEvent.service)).all()
    return [BreakerState(e.service, e.state, e.at, e.reason, n) for e, n in rows]


def breaker_events(s: Session, limit: int = 50) -> list[BreakerEvent]:
    return list(s.exec(select(BreakerEvent).order_by(col(BreakerEvent.id).desc()).limit(limit)))
