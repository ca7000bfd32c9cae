"""The prompt step shown before an iteration: the refinement from the iteration before it, or,
before iteration 1, the enhancement (stored as a refinement *from iteration 0*, its original text
in its ``enhance`` edit), so the Gallery shows the enhancement as its own diff step."""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.review.textdiff import Part, word_diff
from pipeline.store.models import Iteration, Refinement


def step_before(it: Iteration, prev_it: Iteration | None, refinements: Mapping[int, Refinement]) -> tuple[list[Part] | None, str]:
    """(word diff, rationale) of the step that led to ``it``; (None, "") when there was none."""
    if prev_it is not None:
        refinement = refinements.get(prev_it.number)
        return word_diff(prev_it.prompt_text, it.prompt_text), refinement.rationale if refinement else ""
    enhancement = refinements.get(0)
    if enhancement is None:
        return None, ""
    original = next((str(e.get("from", "")) for e in enhancement.edits if e.get("op") == "enhance"), "")
    return (word_diff(original, it.prompt_text) if original else None), enhancement.rationale
