"""The subjects a prompt's images must keep: its subject reference, its characters' references.

For a prompt with such references the judge gets one more element per subject, "is this the same
character / subject as in the reference image?", and the reference images themselves
(``EvaluationRequest.reference_images``); a "no" is a failed check, which the refiner receives
like any other. The offline judge compares colours with them; the vision judges (Gemini, OpenAI,
Ollama) are shown them after the generated image (``pipeline.services.judge_images``).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.components import Element, ReferenceImage
from pipeline.prompts.elements import reference_elements
from pipeline.store.models import Prompt, PromptReference

SUBJECT_ROLES = ("subject",)  # a style, composition or mask reference is not a subject to keep


def subject_elements(prompt: Prompt, references: Sequence[PromptReference], after: int) -> list[Element]:
    """The reference elements of ``prompt`` (``references``: its reference rows, in order),
    numbered after its other ``after`` elements."""
    rows = [r for r in references if r.role in SUBJECT_ROLES]
    names = {str(c.get("id", "")): str(c.get("name", "") or c.get("id", "")) for c in prompt.characters or []}
    characters = list(dict.fromkeys(names.get(r.character, r.character) for r in rows if r.character))
    own = any(not r.character for r in rows) or isinstance((prompt.meta or {}).get("variation_of"), int)
    return reference_elements(after + 1, characters, own)


def subject_images(references: tuple[ReferenceImage, ...]) -> tuple[ReferenceImage, ...]:
    """The references the judge compares the image with (in the prompt set's order: the judges'
    ``max_reference_images`` keeps the first ones)."""
    return tuple(r for r in references if r.role in SUBJECT_ROLES)
