"""What vision judges and LLM refiners are asked, and how their answers are read (any service).

DSG/TIFA style (``../shared/reference/evaluation.md`` §7):

- **Stage A**, once per source prompt: decompose the original prompt into atomic yes/no
  elements (entity, attribute, count, relation, text, style, …) with parent links.
- **Stage B**, per image: answer each element with evidence first, then yes/no/unsure; rate
  artifacts and aesthetics in words (Likert words, not numbers); name one top issue with a
  suggested prompt change. The overall score is computed in code (``scoring.py``).
- **Refine**: the original prompt, the failed elements, the top issue and the prompt history
  in; the new prompt and a short rationale out.

Every answer is constrained by a JSON schema (structured output on each service) and checked
again here; anything unusable is a ``malformed`` :class:`~pipeline.errors.ProviderError`.
"""

from __future__ import annotations

import json
from typing import Any, cast

from pipeline.components import Answer, Check, Element, EvaluationRequest, Issue, Judgement, RefinedPrompt, RefinementRequest
from pipeline.errors import ProviderError

CATEGORIES = ["entity", "attribute", "count", "relation_spatial", "relation_action", "text_rendering", "style", "global", "negation"]
ARTIFACTS = {"none": 10.0, "minor": 6.0, "major": 2.0}
AESTHETICS = {"poor": 2.0, "fair": 5.0, "good": 8.0, "excellent": 10.0}
TEXT_LEGIBLE = {"n/a": None, "yes": 10.0, "partly": 5.0, "no": 1.0}

ELEMENTS_SCHEMA: dict[str, Any] = {
    "title": "PromptElements", "type": "object", "required": ["elements"],
    "properties": {"elements": {"type": "array", "minItems": 1, "maxItems": 60, "items": {
        "type": "object", "required": ["id", "category", "tuple", "question", "parent_ids", "critical"],
        "properties": {
            "id": {"type": "integer"}, "category": {"type": "string", "enum": CATEGORIES},
            "tuple": {"type": "string"}, "question": {"type": "string"},
            "parent_ids": {"type": "array", "items": {"type": "integer"}}, "critical": {"type": "boolean"},
        }}}},
}
JUDGEMENT_SCHEMA: dict[str, Any] = {
    "title": "ImageJudgement", "type": "object", "required": ["answers", "quality", "top_issue"],
    "properties": {
        "answers": {"type": "array", "items": {
            "type": "object", "required": ["id", "evidence", "answer"],
            "properties": {"id": {"type": "integer"}, "evidence": {"type": "string"},
                           "answer": {"type": "string", "enum": ["yes", "no", "unsure"]}}}},
        "quality": {"type": "object", "required": ["artifacts", "aesthetics", "text_legible"], "properties": {
            "artifacts": {"type": "string", "enum": list(ARTIFACTS)},
            "aesthetics": {"type": "string", "enum": list(AESTHETICS)},
            "text_legible": {"type": "string", "enum": list(TEXT_LEGIBLE)}}},
        "top_issue": {"type": "object", "required": ["element_id", "description", "suggested_prompt_change"], "properties": {
            "element_id": {"type": ["integer", "null"]}, "description": {"type": "string"},
            "suggested_prompt_change": {"type": "string"}}},
    },
}
REFINEMENT_SCHEMA: dict[str, Any] = {
    "title": "RefinedPrompt", "type": "object", "required": ["prompt", "rationale"],
    "properties": {"prompt": {"type": "string"}, "rationale": {"type": "string"}},
}

DECOMPOSE_SYSTEM = (
    "You turn a text-to-image prompt into a Davidsonian scene graph: atomic, verifiable yes/no questions, one per entity, "
    "attribute, count, spatial or action relation, rendered text, style and global property the prompt asks for. "
    "A 'yes' answer must mean the requirement is satisfied (phrase negations accordingly). parent_ids link an attribute or "
    "relation to the entity questions it depends on. critical = explicitly requested. Do not invent requirements."
)
JUDGE_SYSTEM = (
    "You are a strict image judge. Look at the image and answer every question about it. For each question write the "
    "visible evidence first, then answer yes, no or unsure. Rate artifacts (none/minor/major), aesthetics "
    "(poor/fair/good/excellent) and text legibility (n/a/yes/partly/no) in words. Then name the single most important "
    "problem and a concrete change to the prompt that would fix it. Never give an overall score."
)
REFINE_SYSTEM = (
    "You rewrite text-to-image prompts. Keep every requirement of the original prompt; fix the failed requirements and "
    "the top issue with concrete visual wording (describe, do not just name); change one thing at a time; keep it under "
    "{max_words} words. Answer the new prompt and a one-sentence rationale."
)


def decompose_text(prompt: str) -> str:
    return f"Prompt:\n{prompt}\n\nList its elements."


def judge_text(request: EvaluationRequest) -> str:
    questions = "\n".join(f"{e.number}. {e.question}" for e in request.elements)
    return (f"The image was generated for this prompt:\n{request.original_prompt}\n\n"
            f"Answer each question by its id:\n{questions}")


def refine_text(request: RefinementRequest) -> str:
    failed = "\n".join(f"- {c.question}" + (f" (seen: {c.evidence})" if c.evidence else "") for c in request.failed_checks) or "- none"
    top = request.judgement.top_issue
    history = "\n".join(f"- score {score:.1f}: {prompt}" for prompt, score in request.history[-5:]) or "- none"
    if request.purpose == "comply":
        return (f"The image service refused the current prompt under its content policy: {top.description if top else 'no reason given'}\n\n"
                f"Rewrite it so that it complies, keeping the creative intent of the original and changing as little as possible; "
                f"{top.suggestion if top else ''}\n\nOriginal prompt:\n{request.original_prompt}\n\nCurrent prompt:\n{request.current_prompt}")
    return (f"Original prompt (keep all of it):\n{request.original_prompt}\n\nCurrent prompt:\n{request.current_prompt}\n\n"
            f"Failed requirements:\n{failed}\n\nTop issue: {top.description + ' → ' + top.suggestion if top else 'none'}\n\n"
            f"Earlier prompts and their scores:\n{history}")


def _load(service: str, data: Any) -> dict[str, Any]:
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ProviderError(f"{service} did not answer JSON: {str(data)[:120]!r}", kind="malformed", retryable=True) from None
    if not isinstance(data, dict):
        raise ProviderError(f"{service} answered {type(data).__name__} where a JSON object was asked for", kind="malformed", retryable=True)
    return data


def _bad(service: str, what: str) -> ProviderError:
    return ProviderError(f"{service} answered JSON that does not fit the schema: {what}", kind="malformed", retryable=True)


def parse_elements(service: str, data: Any) -> list[Element]:
    raw = _load(service, data).get("elements")
    if not isinstance(raw, list) or not raw:
        raise _bad(service, "no elements")
    out = []
    for item in raw:
        try:
            number, question = int(item["id"]), str(item["question"]).strip()
        except (KeyError, TypeError, ValueError):
            raise _bad(service, f"element {item!r} lacks an integer id or a question") from None
        if not question:
            raise _bad(service, f"element {number} has an empty question")
        category = item.get("category") if item.get("category") in CATEGORIES else "global"
        parents = tuple(int(p) for p in item.get("parent_ids") or [] if isinstance(p, int) and p != number)
        out.append(Element(number=number, category=category, question=question, tuple_text=str(item.get("tuple", "")),
                           parent_numbers=parents, critical=bool(item.get("critical", True))))
    if len({e.number for e in out}) != len(out):
        raise _bad(service, "element ids repeat")
    return out


def parse_judgement(service: str, data: Any, request: EvaluationRequest, *, model: str = "", raw: str = "",
                    cost_usd: float | None = None) -> Judgement:
    body = _load(service, data)
    questions = {e.number: e.question for e in request.elements}
    checks = []
    for answer in body.get("answers") or []:
        try:
            number, verdict = int(answer["id"]), str(answer["answer"]).lower()
        except (KeyError, TypeError, ValueError):
            raise _bad(service, f"answer {answer!r} lacks an id or an answer") from None
        if number not in questions:
            continue  # an answer to a question nobody asked counts for nothing
        checks.append(Check(element=number, question=questions[number], answer=cast(Answer, verdict if verdict in ("yes", "no", "unsure") else "unsure"),
                            evidence=str(answer.get("evidence", ""))[:400]))
    if request.elements and not checks:
        raise _bad(service, "none of the questions was answered")
    quality = body.get("quality") or {}
    if not isinstance(quality, dict):
        raise _bad(service, "quality is not an object")
    criteria: dict[str, float | None] = {
        "artifacts": ARTIFACTS.get(str(quality.get("artifacts", "")).lower()),
        "aesthetics": AESTHETICS.get(str(quality.get("aesthetics", "")).lower()),
        "text_legibility": TEXT_LEGIBLE.get(str(quality.get("text_legible", "n/a")).lower()),
    }
    issues = [Issue(kind="element", description=f"not satisfied: {c.question}" + (f" ({c.evidence})" if c.evidence else ""),
                    suggestion=f"make this explicit in the prompt: {c.question.rstrip('?')}", severity=0.5, element=c.element)
              for c in checks if c.answer == "no"]
    top = body.get("top_issue")
    if isinstance(top, dict) and str(top.get("description", "")).strip():
        element = top.get("element_id") if isinstance(top.get("element_id"), int) else None
        issues.insert(0, Issue(kind="element" if element else "quality", description=str(top["description"])[:400],
                               suggestion=str(top.get("suggested_prompt_change", ""))[:400], severity=1.0, element=element))
    return Judgement(criteria=criteria, checks=checks, issues=issues, model=model, raw_response=raw, cost_usd=cost_usd)


def parse_refinement(service: str, data: Any, *, model: str = "", cost_usd: float | None = None) -> RefinedPrompt:
    body = _load(service, data)
    prompt = str(body.get("prompt") or "").strip()
    if not prompt:
        raise _bad(service, "no prompt")
    return RefinedPrompt(prompt=prompt, rationale=str(body.get("rationale") or "")[:500], model=model, cost_usd=cost_usd)
