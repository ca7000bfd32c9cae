"""Filling the prompt template: ``{name}`` placeholders from a prompt's fields.

The template is split into sentences (at whitespace after ``.``, ``!`` or ``?``); a sentence
whose placeholders are all empty is dropped with its label, so with the default template a
prompt with only ``prompt`` and ``mood`` gives ``"<prompt>. Mood: <mood>."``. A field that
already ends in punctuation is not given a second mark (``"A fox."`` stays ``"A fox."``).

A placeholder no prompt of the set has is refused when the set is checked
(:func:`unknown_placeholders`), so a name is never sent to a provider literally; one that only
some prompts have is empty for the others, and its sentence dropped there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
# Filled for every prompt (possibly empty): its own fields, the set's style, its characters.
STANDARD_FIELDS = ("id", "title", "prompt", "scene", "mood", "negative_prompt", "style", "names", "traits", "characters")
CHARACTER_FIELDS = ("names", "traits", "characters")


def placeholders(template: str) -> list[str]:
    """The field names a template uses, in order, each once."""
    return list(dict.fromkeys(PLACEHOLDER.findall(template)))


def as_text(value: Any) -> str | None:
    """A field's value as template text: strings, numbers, and lists of those; None for anything else."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return ", ".join(str(v).strip() for v in value)
    return None


def fill(template: str, values: Mapping[str, str]) -> str:
    """``template`` with every placeholder replaced from ``values`` (missing = empty)."""
    sentences = []
    for sentence in _SENTENCE_BREAK.split(template.strip()):
        names = PLACEHOLDER.findall(sentence)
        if names and not any(values.get(n) for n in names):
            continue
        filled = PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), sentence)
        sentences.append(re.sub(r"([.!?])[.]", r"\1", filled))
    return re.sub(r"\s+", " ", " ".join(sentences)).strip()


def unknown_placeholders(template: str, field_sets: Iterable[Iterable[str]]) -> list[str]:
    """The placeholders of ``template`` that no prompt has (``field_sets``: each prompt's field names)."""
    have: set[str] = set(STANDARD_FIELDS)
    for names in field_sets:
        have.update(names)
    return [name for name in placeholders(template) if name not in have]
