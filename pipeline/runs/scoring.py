"""The overall score (0–10), computed in code from a judge's answers, never asked of a model.

- faithfulness (0–1): share of elements answered "yes", DSG-style: a child element counts 0
  when any of its parents is answered "no"; "unsure" counts 0. Elements the judge gave no
  check for are left out (a judge that cannot tell does not guess).
- quality (0–10): mean of the judge's criteria that apply.
- overall = 10 x faithfulness x w + quality x (1 - w), with w from ``[scoring]``;
  either part alone when the other is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.components import Check, Element, Judgement
from pipeline.config import shipped

DEFAULT_FAITHFULNESS_WEIGHT = shipped().scoring.faithfulness_weight  # [scoring] in defaults.toml


def faithfulness(checks: Sequence[Check], elements: Sequence[Element]) -> float | None:
    answers = {c.element: c.answer for c in checks}
    parents = {e.number: e.parent_numbers for e in elements}
    scored = [n for n in answers if n in parents] or list(answers)
    if not scored:
        return None
    total = 0.0
    for n in scored:
        if answers[n] != "yes":
            continue
        if any(answers.get(p) == "no" for p in parents.get(n, ())):
            continue
        total += 1.0
    return total / len(scored)


def quality(criteria: dict[str, float | None]) -> float | None:
    values = [v for v in criteria.values() if v is not None]
    return sum(values) / len(values) if values else None


def overall(judgement: Judgement, elements: Sequence[Element], weight: float = DEFAULT_FAITHFULNESS_WEIGHT) -> float:
    f = faithfulness(judgement.checks, elements)
    q = quality(judgement.criteria)
    if f is None and q is None:
        return 0.0
    if f is None:
        score = q or 0.0
    elif q is None:
        score = 10.0 * f
    else:
        score = 10.0 * f * weight + q * (1.0 - weight)
    return round(max(0.0, min(10.0, score)), 2)
