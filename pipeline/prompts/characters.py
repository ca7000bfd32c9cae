"""Characters of a prompt set: who appears on its pages, the same on every one.

::

    "characters": [{"id": "ada", "name": "Ada", "traits": ["red hair", "green coat"],
                    "reference_images": ["faces/ada.png"]}]

A prompt names the characters it shows (``"characters": ["ada"]``); their names and traits go
into the composed prompt and their reference images to the provider with the prompt's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.display import shown
from pipeline.errors import Problem
from pipeline.prompts.references import ReferenceSpec, parse_references

ID_PATTERN_TEXT = r"[A-Za-z0-9_-]{1,64}"
CHARACTER_KEYS = {"id", "name", "traits", "reference_images"}


@dataclass(frozen=True)
class Character:
    id: str
    name: str
    traits: str = ""  # a list in the JSON is joined with ", "
    references: tuple[ReferenceSpec, ...] = ()

    def described(self) -> str:
        """``"Ada (red hair, green coat)"``, or the name alone."""
        return f"{self.name} ({self.traits})" if self.traits else self.name

    def as_record(self) -> dict[str, str]:
        """What a prompt row keeps of the character (its images are rows of their own)."""
        return {"id": self.id, "name": self.name, "traits": self.traits}


def _text(value: Any, where: str, problems: list[Problem], max_chars: int, *, allow_list: bool = False) -> str | None:
    if isinstance(value, list) and allow_list:
        if not all(isinstance(v, str) and v.strip() for v in value):
            problems.append(Problem(where, "expected a list of non-empty strings"))
            return None
        value = ", ".join(v.strip() for v in value)
    if not isinstance(value, str):
        problems.append(Problem(where, "expected a string" + (" or a list of strings" if allow_list else "")))
        return None
    if len(value) > max_chars:
        problems.append(Problem(where, f"{len(value):,} characters, over the limit of {max_chars:,}"))
        return None
    return value.strip()


def parse_characters(value: Any, problems: list[Problem], *, max_count: int, max_chars: int, id_ok: Any) -> dict[str, Character]:
    """The set's ``characters`` by id (``id_ok(text) -> str`` says why an id is unusable, or "")."""
    if value is None:
        return {}
    if not isinstance(value, list):
        problems.append(Problem("characters", "expected a list of characters, each {\"id\", \"name\", \"traits\"}"))
        return {}
    if len(value) > max_count:
        problems.append(Problem("characters", f"{len(value):,} characters, over the limit of {max_count:,}"))
        return {}
    found: dict[str, Character] = {}
    for i, item in enumerate(value):
        where = f"characters[{i}]"
        if not isinstance(item, dict):
            problems.append(Problem(where, "expected an object with an id and a name"))
            continue
        before = len(problems)
        unknown = sorted(set(item) - CHARACTER_KEYS)
        if unknown:
            problems.append(Problem(where, f"unknown key(s) {', '.join(unknown)}; a character has {', '.join(sorted(CHARACTER_KEYS))}"))
        cid = item.get("id")
        why = id_ok(cid) if isinstance(cid, str) else "missing (every character needs an id)" if cid is None else "expected a string"
        if why:
            problems.append(Problem(f"{where}.id", why))
        elif isinstance(cid, str) and cid.lower() in {k.lower() for k in found}:
            problems.append(Problem(f"{where}.id", f'duplicate character id "{cid}"'))
        name = _text(item.get("name"), f"{where}.name", problems, max_chars) if "name" in item else None
        if "name" not in item:
            problems.append(Problem(f"{where}.name", "missing (the name goes into every prompt showing the character)"))
        elif name == "":
            problems.append(Problem(f"{where}.name", "is empty"))
        traits = _text(item.get("traits", ""), f"{where}.traits", problems, max_chars, allow_list=True)
        refs = parse_references(item.get("reference_images"), f"{where}.reference_images", problems,
                                character=cid if isinstance(cid, str) else "")
        if len(problems) == before and isinstance(cid, str) and name:
            found[cid] = Character(id=cid, name=name, traits=traits or "", references=refs)
    return found


def resolve_characters(value: Any, where: str, known: dict[str, Character], problems: list[Problem]) -> tuple[Character, ...]:
    """A prompt's ``characters`` (ids of the set's characters) as :class:`Character` s."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(Problem(where, 'expected a list of character ids, such as ["ada", "bo"]'))
        return ()
    chosen: list[Character] = []
    for j, cid in enumerate(value):
        if cid not in known:
            listed = ", ".join(sorted(known)) or "none are defined in the set's \"characters\""
            problems.append(Problem(f"{where}[{j}]", f'no character "{shown(cid, 80)}" (characters: {listed})'))
        elif known[cid] in chosen:
            problems.append(Problem(f"{where}[{j}]", f'"{cid}" is listed twice'))
        else:
            chosen.append(known[cid])
    return tuple(chosen)
