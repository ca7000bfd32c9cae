"""A run's items page as JSON values straight from four Core reads (no ORM objects).

The same answer as :func:`pipeline.review.items.run_items` serialised by
:func:`pipeline.api.serialize.item` (``tests/test_items_page.py`` compares them on a seeded
run), at a fraction of the CPU: hydrating ORM rows of every column cost most of a page that is
not kept. The statements are built once at import, only the columns the page shows are read,
and the JSON dicts are made from the rows.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any

import sqlalchemy
from sqlalchemy import bindparam, or_
from sqlalchemy.engine import Connection
from sqlmodel import col

from pipeline.api.serialize import image_links
from pipeline.review.decisions import Vote, decide
from pipeline.review.textdiff import word_diff
from pipeline.store.models import Evaluation, Iteration, Prompt, Rating, Refinement, RunItem

_ITEMS = (
    sqlalchemy.select(col(RunItem.id), col(Prompt.position), col(Prompt.key), col(Prompt.title), col(Prompt.scene), col(Prompt.mood),
                      col(Prompt.prompt), col(Prompt.tags), col(RunItem.status), col(RunItem.stop_reason), col(RunItem.final_iteration),
                      col(RunItem.best_score), col(RunItem.cost_usd), col(RunItem.error_kind), col(RunItem.error_message))
    .join(Prompt, col(Prompt.id) == col(RunItem.prompt_id))
    .where(col(RunItem.run_id) == bindparam("run"), col(Prompt.position) > bindparam("after"))
    .order_by(col(Prompt.position)).limit(bindparam("limit"))
)
_ITERATIONS = (
    sqlalchemy.select(col(Iteration.run_item_id), col(Iteration.id), col(Iteration.number), col(Iteration.status),
                      col(Iteration.prompt_text), col(Iteration.negative_prompt), col(Iteration.provider), col(Iteration.model),
                      col(Iteration.seed), col(Iteration.mime_type), col(Iteration.width), col(Iteration.height), col(Iteration.sha256),
                      col(Iteration.byte_size), col(Iteration.latency_ms), col(Iteration.cost_usd), col(Iteration.error_kind),
                      col(Iteration.error_message), col(Iteration.source_url), col(Iteration.started_at), col(Iteration.finished_at),
                      col(Evaluation.id), col(Evaluation.judge), col(Evaluation.model), col(Evaluation.overall_score),
                      col(Evaluation.criteria), col(Evaluation.issues), col(Evaluation.top_suggestion))
    .join(Evaluation, col(Evaluation.iteration_id) == col(Iteration.id), isouter=True)
    .where(col(Iteration.run_item_id).in_(bindparam("ids", expanding=True)))
    .order_by(col(Iteration.run_item_id), col(Iteration.number))
)
_REFINEMENTS = sqlalchemy.select(col(Refinement.run_item_id), col(Refinement.from_iteration), col(Refinement.rationale),
                                 col(Refinement.edits)).where(col(Refinement.run_item_id).in_(bindparam("ids", expanding=True)))
_RATINGS = (  # as pipeline.review.ratings.summaries: rows that say anything, newest first
    sqlalchemy.select(col(Rating.iteration_id), col(Rating.reviewer), col(Rating.stars), col(Rating.decision), col(Rating.note),
                      col(Rating.rated_at), col(Rating.decided_at))
    .where(col(Rating.iteration_id).in_(bindparam("ids", expanding=True)),
           or_(col(Rating.stars).is_not(None), col(Rating.decision) != "none", col(Rating.note) != ""))
    .order_by(col(Rating.rated_at).desc(), col(Rating.id).desc())
)
_CHUNK = 500  # ids per IN list


def _at(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _error(kind: str, message: str) -> str:
    return f"{kind}: {message}" if message else ""


def _reviews(rows: list[Any], me: str, rule: str) -> dict[str, Any]:
    views = [{"reviewer": r[1], "stars": r[2], "decision": r[3], "note": r[4], "rated_at": _at(r[5])} for r in rows]
    given = [r[2] for r in rows if r[2] is not None]
    f = decide((Vote(r[1], r[3], r[6]) for r in rows), rule)
    return {"mine": next((v for v in views if me and v["reviewer"] == me), None), "others": [v for v in views if v["reviewer"] != me],
            "mean_stars": sum(given) / len(given) if given else None, "star_count": len(given), "decision": f.decision,
            "decision_rule": f.rule, "needs_tiebreak": f.needs_tiebreak, "approvals": f.approvals, "rejections": f.rejections}


@lru_cache(maxsize=1024)  # a few pages of diffs; ~1 MB at typical prompt lengths
def _diff(before: str, after: str) -> tuple[dict[str, str], ...]:
    """A word diff as JSON values, kept: a page rebuilt after a review shows the same diffs, and
    diffing is most of a page's CPU. Shared between pages (serialised, never changed)."""
    return tuple({"op": p.op, "text": p.text} for p in word_diff(before, after))


def _step(prompt_text: str, previous: Any, refinements: dict[int, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """(diff, rationale) as :func:`pipeline.review.steps.step_before`: the refinement from the
    iteration before, or before the first the enhancement (a refinement from iteration 0)."""
    if previous is not None:
        refinement = refinements.get(previous[2])
        return list(_diff(previous[4], prompt_text)), refinement[2] if refinement else ""
    enhancement = refinements.get(0)
    if enhancement is None:
        return None, ""
    original = next((str(e.get("from", "")) for e in enhancement[3] if e.get("op") == "enhance"), "")
    return (list(_diff(original, prompt_text)) if original else None), enhancement[2]


def _iteration(r: Any, previous: Any, refinements: dict[int, Any], reviews: dict[int, dict[str, Any]]) -> dict[str, Any]:
    made = r[3] == "ok"
    diff, rationale = _step(r[4], previous, refinements)
    scored = r[21] is not None
    return {
        "id": r[1], "number": r[2], "status": r[3], "prompt": r[4], "negative_prompt": r[5], "provider": r[6], "model": r[7],
        "seed": r[8], "mime_type": r[9], "width": r[10], "height": r[11], "sha256": r[12], "bytes": r[13], "latency_ms": r[14],
        "cost_usd": r[15], "error": _error(r[16], r[17]), "source_url": r[18], "started_at": _at(r[19]), "finished_at": _at(r[20]),
        "links": image_links(r[1]) if made else {},
        "evaluation": {"judge": r[22], "model": r[23], "score": r[24], "criteria": r[25], "issues": r[26], "top_suggestion": r[27]}
        if scored else None,
        "diff": diff, "rationale": rationale,
        "score_delta": r[24] - previous[24] if scored and previous is not None and previous[21] is not None else None,
        "reviews": reviews.get(r[1]),
    }


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def items(conn: Connection, run_id: int, *, after_position: int = -1, limit: int = 100, reviewer: str = "",
          rule: str = "latest") -> list[dict[str, Any]]:
    """The run's prompts after ``after_position`` (their place in the set), at most ``limit``, as
    the API shows them (each with ``position``, for the next page's cursor)."""
    heads: list[Any] = list(conn.execute(_ITEMS, {"run": run_id, "after": after_position, "limit": max(1, limit)}))
    ids: list[int] = [h[0] for h in heads]
    rows: list[Any] = []
    refinements: dict[int, dict[int, Any]] = {}
    for part in _chunks(ids):
        rows.extend(conn.execute(_ITERATIONS, {"ids": part}).all())
        for ref in conn.execute(_REFINEMENTS, {"ids": part}):
            refinements.setdefault(ref[0], {})[ref[1]] = ref
    images = list(dict.fromkeys(r[1] for r in rows if r[3] == "ok"))
    by_image: dict[int, list[Any]] = {i: [] for i in images}
    for part in _chunks(images):
        for rating in conn.execute(_RATINGS, {"ids": part}):
            by_image[rating[0]].append(rating)
    me = reviewer.strip()
    reviews = {i: _reviews(found, me, rule) for i, found in by_image.items()}
    by_item: dict[int, list[Any]] = {}
    for r in rows:
        by_item.setdefault(r[0], []).append(r)
    out = []
    for h in heads:
        mine = refinements.get(h[0], {})
        views, previous = [], None
        for r in by_item.get(h[0], ()):
            views.append(_iteration(r, previous, mine, reviews))
            previous = r
        out.append({
            "id": h[0], "position": h[1], "prompt_id": h[2], "title": h[3], "scene": h[4], "mood": h[5], "prompt": h[6], "tags": h[7],
            "status": h[8], "stop_reason": h[9], "best_iteration": h[10], "best_score": h[11], "cost_usd": h[12],
            "error": _error(h[13], h[14]), "iterations": views,
        })
    return out
