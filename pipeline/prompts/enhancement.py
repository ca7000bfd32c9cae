"""The offline enhancer: adds composition, lighting, style and detail a prompt does not yet ask for.

Rule-based and deterministic, no key needed. It only *appends* phrases from the shared
lexicon's vocabulary (so the offline renderer and judge understand them), one per aspect the
prompt leaves open, and never edits the prompt's own words: the subject, counts and named
elements stay exactly as written. A set's ``style`` string is appended when the prompt does not
already contain it.
"""

from __future__ import annotations

import re

from pipeline.prompts import lexicon

COMPOSITION_WORDS = re.compile(r"\b(?:composition|close-up|closeup|wide shot|wide-angle|portrait|framing|framed|centered|centred|"
                               r"rule of thirds|aerial|overhead|macro|full body|medium shot|symmetr\w*)\b", re.IGNORECASE)
LIGHTING_WORDS = re.compile(r"\b(?:light|lights|lighting|lit|sunlight|moonlight|backlit|glow\w*|shadows?|illuminated)\b", re.IGNORECASE)
COLOUR_WORDS = re.compile(r"\bcolou?rs?\b", re.IGNORECASE)
COMPOSITION = "balanced composition with the main subject clearly in frame"
LIGHTING = "soft natural light"
DETAIL = "fine detail"
SATURATION = "rich natural colours"


def enhance_offline(prompt: str, style: str = "") -> tuple[str, list[str]]:
    """The enhanced prompt and the phrases added (empty when the prompt already covers every aspect)."""
    intent = lexicon.read(prompt)
    added: list[str] = []
    if not COMPOSITION_WORDS.search(prompt):
        added.append(COMPOSITION)
    if not intent.light and not intent.contrast and not LIGHTING_WORDS.search(prompt):
        added.append(LIGHTING)
    if not intent.detail:
        added.append(DETAIL)
    if not intent.saturation and not intent.colours and not COLOUR_WORDS.search(prompt):
        added.append(SATURATION)
    if style.strip() and style.strip().lower() not in prompt.lower():
        added.append(style.strip().rstrip("."))
    if not added:
        return prompt, []
    base = prompt.rstrip()
    if base and base[-1] not in ".!?。！？":
        base += "."
    return f"{base} {', '.join(added)[:1].upper()}{', '.join(added)[1:]}.", added
