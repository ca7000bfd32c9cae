"""Validate a prompt set and options as a launch would, and say what the run would do; nothing is created."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from pipeline.api.auth import Reviewer
from pipeline.api.context import ctx_of
from pipeline.api.launching import check, spec_from_document
from pipeline.api.schemas import Validate
from pipeline.prompts.promptset import compose_prompt
from pipeline.runs.estimate import estimate_run

router = APIRouter(prefix="/v1/prompts", tags=["prompts"])
SHOWN_PROMPTS = 50  # the composed text of the first this many prompts is returned


@router.post("/validate", summary="The CLI's checks of a prompt set and run options, with the cost estimate (no run created)")
def validate(request: Request, body: Validate, token: Reviewer) -> dict[str, Any]:
    ctx = ctx_of(request)
    spec = spec_from_document(ctx.settings, body.prompt_set)
    config, analyses = check(ctx, spec, body)
    est = estimate_run(ctx.settings, config, spec.prompts)
    template = ctx.settings.prompt.template
    flags = [f for a in analyses for f in a.flags]
    return {
        "valid": True, "name": spec.name, "prompts": len(spec.prompts), "sha256": spec.sha256, "config": config.to_dict(),
        "estimate": {"calls": est.calls, "generations": est.generations, "evaluations": est.evaluations,
                     "refinements": est.refinements, "cost_usd": est.cost_usd, "unpriced": list(est.unpriced)},
        "warnings": len(flags), "analysis": [a.as_dict() for a in analyses],  # as `python -m pipeline check --json`
        "composed": [{"prompt_id": p.id, "text": compose_prompt(p, template)} for p in spec.prompts[:SHOWN_PROMPTS]],
    }
