"""Real long prompts for the prompt-tool tests and bench: PartiPrompts scenes concatenated.

Built from the copy of ``PartiPrompts.tsv`` shipped in ``bench/data/`` (the shared original, as
the benchmarks read it). :func:`long_prompt` gives an exact length; :data:`MIXED_SCRIPTS` are
scenes in other scripts (CJK, Arabic, Hebrew, emoji, combining marks) to splice in.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

PARTI = Path(__file__).resolve().parent.parent / "bench" / "data" / "PartiPrompts.tsv"
MIXED_SCRIPTS = (
    'A paper lantern with the characters "東京の夜" glowing above a ramen stall.',
    'A shop sign reading "مرحبا بالعالم" over a blue door.',
    'A scroll with the words "שלום עולם" on a wooden desk.',
    "Two foxes 🦊🦊 under a crescent moon 🌙.",
    'A café menu that says "Cre\u0300me bru\u0302le\u0301e" in chalk.',
    "A Korean street sign 서울역 beside a yellow taxi.",
)


@lru_cache(maxsize=1)
def scenes() -> tuple[str, ...]:
    """Parti prompts long enough to be a scene (over 40 characters), each ending in a full stop."""
    with PARTI.open(encoding="utf-8", newline="") as f:
        rows = [r["Prompt"].strip() for r in csv.DictReader(f, delimiter="\t")]
    return tuple(p if p.endswith((".", "!", "?")) else p + "." for p in rows if len(p) > 40)


def long_prompt(length: int, start: int = 0, *, mixed: bool = False) -> str:
    """Exactly ``length`` characters of concatenated scenes, starting at scene ``start``; with
    ``mixed``, a scene in another script every fourth scene. Ends in a full stop."""
    pool = scenes()
    parts: list[str] = []
    total, i = 0, start
    while total < length:
        scene = MIXED_SCRIPTS[(i // 4) % len(MIXED_SCRIPTS)] if mixed and i % 4 == 3 else pool[i % len(pool)]
        parts.append(scene)
        total += len(scene) + 1
        i += 1
    text = " ".join(parts)
    if len(text) > length:  # cut at the last space that leaves room for the closing full stop
        cut = text.rfind(" ", 0, length - 1)
        text = text[:cut].rstrip(" .,;") + "."
        text = text[:-1] + "," * (length - len(text)) + "." if len(text) < length else text
    return text
