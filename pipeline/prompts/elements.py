"""Turning a prompt into atomic yes/no elements (DSG/TIFA), and editing them.

:func:`visual_elements` is the offline decomposer: it makes one element for each visual
property the lexicon reads (each named colour, the light asked for, contrast, focus,
saturation). Objects, counts and relations need a vision model's decomposition; the offline
one leaves them out rather than invent checks it cannot answer.
"""

from __future__ import annotations

from pipeline.components import Element
from pipeline.prompts import lexicon

LIGHT_QUESTIONS = {
    "dark": "Is the scene dark, as a night or low-key image should be?",
    "dim": "Is the scene dimly lit, as dusk or twilight should be?",
    "bright": "Is the scene brightly lit?",
}
CONTRAST_QUESTIONS = {"high": "Is the image high in contrast?", "low": "Is the contrast soft and low, as in fog or haze?"}
DETAIL_QUESTIONS = {"sharp": "Is the image sharp and finely detailed?", "soft": "Is the focus soft or dreamy?"}
SATURATION_QUESTIONS = {
    "vivid": "Are the colours vivid and saturated?",
    "muted": "Are the colours muted or pastel?",
    "mono": "Is the image monochrome (black and white)?",
}


REFERENCE_TUPLE = "reference - same"  # tuple_text prefix of a "same as the reference" element


def reference_elements(first_number: int, characters: list[str], own_subject: bool) -> list[Element]:
    """One element per character with reference images ("the same character as the reference?"),
    and one for the prompt's own subject reference; numbered from ``first_number``."""
    questions = [(f"Is this the same character ({name}) as in the reference image?", f"{REFERENCE_TUPLE} (character: {name})")
                 for name in characters]
    if own_subject:
        questions.append(("Is this the same subject as in the reference image?", f"{REFERENCE_TUPLE} (subject)"))
    return [Element(number=first_number + i, category="reference", question=q, tuple_text=t) for i, (q, t) in enumerate(questions)]


def visual_elements(prompt: str) -> list[Element]:
    intent = lexicon.read(prompt)
    out: list[Element] = []

    def add(category: str, question: str, tuple_text: str) -> None:
        out.append(Element(number=len(out) + 1, category=category, question=question, tuple_text=tuple_text))

    for colour in intent.colours:
        add("attribute", f"Is {colour} clearly present in the image?", f"attribute - color ({colour})")
    for colour in intent.avoided_colours:
        add("negation", f"Is the image free of {colour}?", f"negation - color ({colour})")
    if intent.light:
        add("global", LIGHT_QUESTIONS[intent.light], f"global - lighting ({intent.light})")
    if intent.contrast:
        add("style", CONTRAST_QUESTIONS[intent.contrast], f"style - contrast ({intent.contrast})")
    if intent.detail:
        add("style", DETAIL_QUESTIONS[intent.detail], f"style - focus ({intent.detail})")
    if intent.saturation:
        add("style", SATURATION_QUESTIONS[intent.saturation], f"style - saturation ({intent.saturation})")
    return out
