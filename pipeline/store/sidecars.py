"""JSON sidecars beside the images: a readable mirror of the database (which stays the truth).

    results/<prompt_id>/iteration_<n>_results.json      the generation: prompt sent, provider, image facts
                        iteration_<n>_evaluation.json   the judgement: score, criteria, checks, issues
                        summary.json                    every iteration in brief, and the best one

All are rewritten from the database on resume, so a sidecar lost in a crash comes back. They go
where the run's images go (:mod:`pipeline.store.objects`: the output folder, or the bucket).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.display import stop_reason
from pipeline.store.models import Evaluation, Iteration, Prompt, Refinement, Run, RunItem
from pipeline.store.objects import ObjectStore, put_json


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def lineage(it: Iteration) -> dict[str, Any]:
    """What made the image (generate, edit, variation, grid-cell, refine), from which images
    (iteration ids), and a grid cell's index (1–4, reading order)."""
    return {"operation": it.operation, "parent_ids": list(it.parent_ids or []), "cell_index": it.cell_index}


def iteration_results(run: Run, prompt: Prompt, it: Iteration, refinement: Refinement | None) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "prompt_id": prompt.key,
        "iteration": it.number,
        "status": it.status,
        "prompt": it.prompt_text,
        "negative_prompt": it.negative_prompt,
        "provider": it.provider,
        "model": it.model,
        "seed": it.seed,
        "parameters": it.parameters,
        "image": Path(it.image_path).name if it.image_path else None,
        "mime_type": it.mime_type,
        "width": it.width,
        "height": it.height,
        "sha256": it.sha256,
        "bytes": it.byte_size,
        "latency_ms": it.latency_ms,
        "cost_usd": it.cost_usd,
        "request_id": it.request_id or None,  # the service's own id for the generation
        "source_url": it.source_url or None,  # where the image was downloaded from
        "service_metadata": (it.service_meta or {}).get("response") or None,  # what the service said about it
        "error": {"kind": it.error_kind, "message": it.error_message} if it.error_message else None,
        "routing": it.routing or None,  # which provider served, and each one skipped with why
        **lineage(it),
        "grid": (it.parameters or {}).get("grid"),  # a grid's split: its cells' boxes, or why it was kept whole
        "refined_from": {
            "iteration": refinement.from_iteration, "refiner": refinement.refiner, "model": refinement.model,
            "rationale": refinement.rationale, "edits": refinement.edits,
        } if refinement else None,
        "started_at": _iso(it.started_at),
        "finished_at": _iso(it.finished_at),
    }


def iteration_evaluation(prompt: Prompt, it: Iteration, ev: Evaluation) -> dict[str, Any]:
    return {
        "prompt_id": prompt.key,
        "iteration": it.number,
        "judge": ev.judge,
        "model": ev.model,
        "overall_score": ev.overall_score,
        "criteria": ev.criteria,
        "checks": ev.checks,
        "issues": ev.issues,
        "top_suggestion": ev.top_suggestion,
        "latency_ms": ev.latency_ms,
        "cost_usd": ev.cost_usd,
        "created_at": _iso(ev.created_at),
    }


def summary(run: Run, prompt: Prompt, item: RunItem, rows: list[tuple[Iteration, Evaluation | None]]) -> dict[str, Any]:
    iterations = [
        {
            "iteration": it.number,
            "status": it.status,
            "prompt": it.prompt_text,
            "image": Path(it.image_path).name if it.image_path else None,
            "score": ev.overall_score if ev else None,
            "provider": it.provider,
            "model": it.model,
            "judge": ev.judge if ev else None,
            "cost_usd": round((it.cost_usd or 0.0) + ((ev.cost_usd or 0.0) if ev else 0.0), 6),
            "generation_ms": it.latency_ms,
            **lineage(it),
            "evaluation_ms": ev.latency_ms if ev else None,
        }
        for it, ev in rows
    ]
    return {
        "run_id": run.id,
        "id": prompt.key,
        "title": prompt.title,
        "scene": prompt.scene,
        "mood": prompt.mood,
        "original_prompt": prompt.prompt,
        "status": item.status,
        "stop_reason": item.stop_reason or None,  # why it stopped: a key of pipeline.display.STOP_REASONS
        "stopped_because": stop_reason(item.stop_reason) or None,
        "error": {"kind": item.error_kind, "message": item.error_message} if item.error_message else None,
        "iterations": iterations,
        "best_iteration": item.final_iteration,
        "best_score": item.best_score,
        "cost_usd": round(item.cost_usd, 6),
        "started_at": _iso(item.started_at),
        "finished_at": _iso(item.finished_at),
    }


def write_iteration_results(store: ObjectStore, folder: str, payload: dict[str, Any]) -> None:
    put_json(store, f"{folder}/iteration_{payload['iteration']}_results.json", payload)


def write_iteration_evaluation(store: ObjectStore, folder: str, payload: dict[str, Any]) -> None:
    put_json(store, f"{folder}/iteration_{payload['iteration']}_evaluation.json", payload)


def write_summary(store: ObjectStore, folder: str, payload: dict[str, Any]) -> None:
    put_json(store, f"{folder}/summary.json", payload)
