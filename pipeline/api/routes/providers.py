"""Every service: ready or what is missing, capabilities, breaker state, recent success and latency."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from fastapi import APIRouter, Request

from pipeline.api.auth import Reviewer
from pipeline.api.context import ctx_of
from pipeline.redaction import redact
from pipeline.review import stats
from pipeline.services.capabilities import capabilities_for
from pipeline.services.catalog import catalog
from pipeline.store.db import session

router = APIRouter(prefix="/v1/providers", tags=["providers"])
RECENT_CALLS = 2000  # the success rate and latency are over the newest this many calls of all services


def _recent(calls: list[stats.Call]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per service name, per operation: calls, share that succeeded, p50/p95 latency of the successful ones."""
    by: dict[tuple[str, str], list[stats.Call]] = defaultdict(list)
    for c in calls:
        name, _, op = c.series.partition(" · ")
        by[(name, op)].append(c)
    out: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    for (name, op), rows in by.items():
        ok = [c.latency_ms for c in rows if c.outcome == "ok"]
        out[name][op] = {"calls": len(rows), "success_rate": round(len(ok) / len(rows), 4),
                         "p50_ms": round(stats.percentile(ok, 50), 1) if ok else None,
                         "p95_ms": round(stats.percentile(ok, 95), 1) if ok else None}
    return out


@router.get("", summary="Every provider, judge and refiner: readiness, capabilities, breaker, recent calls")
def list_providers(request: Request, token: Reviewer) -> dict[str, list[dict[str, Any]]]:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        recent = _recent(stats.calls(s, RECENT_CALLS))
        breakers = {b.service: b for b in stats.breaker_states(s)}
    data = []
    for info in catalog():
        table = ctx.settings.component(info.kind, info.name)
        breaker = breakers.get(f"{info.kind}/{info.name}")
        caps = dataclasses.asdict(capabilities_for(table, str(table.get("model", "")), f"{info.kind}.{info.name}")) \
            if info.kind == "providers" else None
        data.append({
            "kind": info.kind, "name": info.name, "display_name": info.display_name, "offline": info.offline, "ready": info.configured,
            "missing": list(info.missing), "key_env_var": info.key_env_var, "key_present": info.key_present,
            "base_url": redact(info.base_url), "model": str(table.get("model", "")), "capabilities": caps,
            "breaker": {"state": breaker.state, "since": breaker.since.isoformat(), "reason": redact(breaker.reason)}
            if breaker else {"state": "closed", "since": None, "reason": ""},
            "recent": recent.get(info.name, {}),
        })
    return {"data": data}
