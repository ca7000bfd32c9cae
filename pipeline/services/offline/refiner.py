"""The offline refiner: turns the judge's issues into concrete, deterministic prompt edits.

Each round it takes the most severe issues that carry a suggestion (``edits_per_round``,
default 2: Idea2Img found one or two focused changes per round work best) and appends each
suggested phrase as its own sentence. The original prompt's words are never removed; a phrase
this refiner added in an earlier round is replaced when a new one addresses the same criterion
(e.g. "soft diffuse light" replaces "high contrast" after an overshoot).
"""

from __future__ import annotations

import re

from pipeline.components import Issue, RefinedPrompt, RefinementRequest, Refiner
from pipeline.services.offline.judge import SUGGESTIONS

_PHRASES_BY_CRITERION: dict[str, set[str]] = {}
for (criterion, _), phrase in SUGGESTIONS.items():
    _PHRASES_BY_CRITERION.setdefault(criterion, set()).add(phrase)


def _sentence(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:] + "."


def _remove_sentence(prompt: str, phrase: str) -> str:
    pattern = re.compile(r"\s*" + re.escape(_sentence(phrase)), re.IGNORECASE)
    return pattern.sub("", prompt, count=1)


class OfflineRefiner(Refiner):
    name = "offline"
    label = "offline: rule-based edits, no model"
    offline = True

    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        limit = int(self.settings.get("edits_per_round", 2))
        prompt = request.current_prompt.rstrip()
        original = request.original_prompt.lower()
        edits: list[dict[str, str]] = []
        reasons: list[str] = []
        actionable: list[Issue] = sorted(
            (i for i in request.judgement.issues if i.suggestion), key=lambda i: (-i.severity, i.kind, i.suggestion)
        )
        for issue in actionable:
            if len(edits) >= limit:
                break
            if issue.suggestion.lower() in prompt.lower():
                continue  # asked already; repeating it would not change the render
            for old in _PHRASES_BY_CRITERION.get(issue.kind, set()) - {issue.suggestion}:
                if old.lower() not in original and _sentence(old).lower() in prompt.lower():
                    prompt = _remove_sentence(prompt, old)
                    edits.append({"op": "remove", "text": old, "reason": f"superseded for {issue.kind}"})
            if not prompt.endswith((".", "!", "?")):
                prompt += "."
            prompt = f"{prompt} {_sentence(issue.suggestion)}"
            edits.append({"op": "append", "text": issue.suggestion, "reason": issue.description, "kind": issue.kind})
            reasons.append(f"{issue.description} → added “{issue.suggestion}”")
        if reasons:
            rationale = "; ".join(reasons)
        elif request.judgement.issues:
            rationale = "The remaining issues have no prompt-level fix; prompt unchanged."
        else:
            rationale = "No issues found; prompt unchanged."
        return RefinedPrompt(prompt=prompt, rationale=rationale, edits=edits, model=self.model,
                             cost_usd=float(self.settings.get("price_per_call", 0.0)))
