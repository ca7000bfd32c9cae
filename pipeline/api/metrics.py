"""``GET /metrics`` in the Prometheus text format (version 0.0.4).

The pipeline's figures are read from the database, so they count every run and call whichever
process made them (dashboard, CLI, API): runs by status, calls by service, operation and
outcome, call latency as a histogram, and cost. The API's own requests are counted in memory.
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict

import sqlalchemy
from sqlalchemy import case, func
from sqlmodel import Session, col, select

from pipeline.store.models import ProviderCall, Run

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**pairs: str) -> str:
    return "{" + ",".join(f'{k}="{_label(v)}"' for k, v in pairs.items()) + "}"


def _num(x: float) -> str:
    return "+Inf" if math.isinf(x) else repr(float(x)) if not float(x).is_integer() else str(int(x))


class RequestMetrics:
    """The API's requests by method, route template and status, with their duration."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count: dict[tuple[str, str, str], int] = defaultdict(int)
        self.buckets: dict[tuple[str, str], list[int]] = {}
        self.sums: dict[tuple[str, str], float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.count[(method, route, str(status))] += 1
            b = self.buckets.setdefault((method, route), [0] * (len(REQUEST_BUCKETS_S) + 1))
            for i, edge in enumerate((*REQUEST_BUCKETS_S, math.inf)):
                if seconds <= edge:
                    b[i] += 1
            self.sums[(method, route)] += seconds

    def lines(self) -> list[str]:
        out = ["# HELP darkroom_api_requests_total API requests by method, route and status.",
               "# TYPE darkroom_api_requests_total counter"]
        with self._lock:
            for (method, route, status), n in sorted(self.count.items()):
                out.append(f"darkroom_api_requests_total{_labels(method=method, route=route, status=status)} {n}")
            out += ["# HELP darkroom_api_request_duration_seconds Time to answer an API request.",
                    "# TYPE darkroom_api_request_duration_seconds histogram"]
            for (method, route), b in sorted(self.buckets.items()):
                for edge, n in zip((*REQUEST_BUCKETS_S, math.inf), b, strict=True):
                    out.append(f"darkroom_api_request_duration_seconds_bucket{_labels(method=method, route=route, le=_num(edge))} {n}")
                out.append(f"darkroom_api_request_duration_seconds_sum{_labels(method=method, route=route)} {self.sums[(method, route)]}")
                out.append(f"darkroom_api_request_duration_seconds_count{_labels(method=method, route=route)} {b[-1]}")
        return out


def pipeline_lines(s: Session) -> list[str]:
    """Runs, calls, latency and cost as recorded in the database (three grouped queries)."""
    out = ["# HELP darkroom_runs Runs by status.", "# TYPE darkroom_runs gauge"]
    for status, n in s.exec(select(Run.status, func.count()).group_by(col(Run.status)).order_by(col(Run.status))).all():
        out.append(f"darkroom_runs{_labels(status=status)} {n}")
    out += ["# HELP darkroom_provider_calls_total Calls to services by service, operation and outcome.",
            "# TYPE darkroom_provider_calls_total counter"]
    rows = s.exec(select(ProviderCall.provider, ProviderCall.operation, ProviderCall.outcome, func.count())
                  .group_by(col(ProviderCall.provider), col(ProviderCall.operation), col(ProviderCall.outcome))).all()
    for service, op, outcome, n in sorted(rows):
        out.append(f"darkroom_provider_calls_total{_labels(service=service, operation=op, outcome=outcome)} {n}")
    edges_ms = [e * 1000 for e in LATENCY_BUCKETS_S]
    latency = col(ProviderCall.latency_ms)
    hist = s.execute(  # many columns: sqlmodel's select() types at most four, SQLAlchemy's any number
        sqlalchemy.select(col(ProviderCall.provider), col(ProviderCall.operation), func.count(), func.coalesce(func.sum(latency), 0.0),
               func.coalesce(func.sum(ProviderCall.cost_usd), 0.0),
               *(func.sum(case((latency <= e, 1), else_=0)) for e in edges_ms))
        .group_by(col(ProviderCall.provider), col(ProviderCall.operation))
    ).all()
    out += ["# HELP darkroom_provider_call_latency_seconds Latency of calls to services.",
            "# TYPE darkroom_provider_call_latency_seconds histogram"]
    for row in sorted(hist, key=lambda r: (r[0], r[1])):
        service, op, n, total_ms = row[0], row[1], int(row[2]), float(row[3])
        for edge, within in zip(LATENCY_BUCKETS_S, row[5:], strict=True):
            out.append(f"darkroom_provider_call_latency_seconds_bucket{_labels(service=service, operation=op, le=_num(edge))} {int(within or 0)}")
        out.append(f"darkroom_provider_call_latency_seconds_bucket{_labels(service=service, operation=op, le='+Inf')} {n}")
        out.append(f"darkroom_provider_call_latency_seconds_sum{_labels(service=service, operation=op)} {total_ms / 1000}")
        out.append(f"darkroom_provider_call_latency_seconds_count{_labels(service=service, operation=op)} {n}")
    out += ["# HELP darkroom_cost_usd_total Money spent on calls, by service and operation.", "# TYPE darkroom_cost_usd_total counter"]
    for row in sorted(hist, key=lambda r: (r[0], r[1])):
        out.append(f"darkroom_cost_usd_total{_labels(service=row[0], operation=row[1])} {float(row[4])}")
    return out
