"""Pipeline records as the API's JSON: plain values, links to the images, never a path on the server."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pipeline.review.items import ItemReview, IterationReview
from pipeline.review.ratings import ImageSummary, ReviewerRating
from pipeline.store.models import Evaluation, Iteration, row_id


def _at(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def rating(r: ReviewerRating | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {"reviewer": r.reviewer, "stars": r.stars, "decision": r.decision, "note": r.note, "rated_at": _at(r.rated_at)}


def reviews(summary: ImageSummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    f = summary.in_force
    return {"mine": rating(summary.mine), "others": [rating(o) for o in summary.others], "mean_stars": summary.mean_stars,
            "star_count": summary.star_count, "decision": f.decision, "decision_rule": f.rule, "needs_tiebreak": f.needs_tiebreak,
            "approvals": f.approvals, "rejections": f.rejections}


def image_links(iteration_id: int) -> dict[str, str]:
    base = f"/v1/images/{iteration_id}"
    return {"image": base, "thumbnail": f"{base}/thumbnail", "review": f"{base}/review"}


def evaluation(ev: Evaluation | None) -> dict[str, Any] | None:
    if ev is None:
        return None
    return {"judge": ev.judge, "model": ev.model, "score": ev.overall_score, "criteria": ev.criteria, "issues": ev.issues,
            "top_suggestion": ev.top_suggestion}


def iteration(it: Iteration) -> dict[str, Any]:
    """One iteration: what was sent, who made it, the image's facts (the service's original URL included)."""
    made = it.status == "ok"
    return {
        "id": row_id(it), "number": it.number, "status": it.status, "prompt": it.prompt_text, "negative_prompt": it.negative_prompt,
        "provider": it.provider, "model": it.model, "seed": it.seed, "mime_type": it.mime_type, "width": it.width, "height": it.height,
        "sha256": it.sha256, "bytes": it.byte_size, "latency_ms": it.latency_ms, "cost_usd": it.cost_usd,
        "error": f"{it.error_kind}: {it.error_message}" if it.error_message else "", "source_url": it.source_url,
        "started_at": _at(it.started_at), "finished_at": _at(it.finished_at), "links": image_links(row_id(it)) if made else {},
    }


def _iteration_review(v: IterationReview) -> dict[str, Any]:
    return {**iteration(v.iteration), "evaluation": evaluation(v.evaluation),
            "diff": [{"op": p.op, "text": p.text} for p in v.diff] if v.diff is not None else None,
            "rationale": v.rationale, "score_delta": v.score_delta, "reviews": reviews(v.reviews)}


def item(view: ItemReview) -> dict[str, Any]:
    it, p = view.item, view.prompt
    return {
        "id": row_id(it), "position": p.position, "prompt_id": p.key, "title": p.title, "scene": p.scene, "mood": p.mood,
        "prompt": p.prompt, "tags": p.tags, "status": it.status, "stop_reason": it.stop_reason, "best_iteration": it.final_iteration,
        "best_score": it.best_score, "cost_usd": it.cost_usd, "error": f"{it.error_kind}: {it.error_message}" if it.error_message else "",
        "iterations": [_iteration_review(v) for v in view.iterations],
    }
