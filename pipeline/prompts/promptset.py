"""Reading and validating a prompt set, and composing the text sent to a provider.

The format is the seed format::

    {"name": "optional", "prompts": [{"id": "scene_001", "title": "...", "scene": "...",
                                      "mood": "...", "prompt": "..."}]}

``id`` and ``prompt`` are required; ``title``, ``scene``, ``mood``, ``negative_prompt`` and
``style`` are optional strings; ``seed`` an integer; ``size`` ``"WxH"`` or ``"auto"``; ``tags`` a
list of strings; ``reference_images`` images sent with the prompt (:mod:`.references`);
``characters`` ids of the set's characters (:mod:`.characters`). Other keys are kept as metadata,
and the template may use them (``{bio}``). At the set's level: ``characters``, ``style`` (applied
to every prompt that has none of its own) and ``template`` (instead of ``[prompt] template``).
Validation collects every problem with its JSON path and raises :class:`PromptSetInvalid` if
there is any, so the caller can write nothing.

Every string anywhere in the document (keys included) must be valid Unicode: a lone surrogate
such as ``"\ud800"`` is legal JSON but cannot be encoded, printed or stored, so it is refused with
its path. Nesting is bounded (:attr:`Limits.max_depth`), and so is anything a message quotes back.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from pipeline.config import Settings, shipped
from pipeline.display import shown
from pipeline.errors import Problem, PromptSetInvalid
from pipeline.prompts.characters import Character, parse_characters, resolve_characters
from pipeline.prompts.references import ReferenceSpec, parse_references
from pipeline.prompts.references import type_name as _type_name
from pipeline.prompts.template import CHARACTER_FIELDS, STANDARD_FIELDS, as_text, fill, placeholders, unknown_placeholders

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Device names Windows refuses as a file or folder name, in any case and whatever the extension
# (``nul.txt`` too); COM0 and LPT0 included. Ids become folder names.
RESERVED_NAMES = {"con", "prn", "aux", "nul"} | {f"com{i}" for i in range(10)} | {f"lpt{i}" for i in range(10)}
SIZE_PATTERN = re.compile(r"(\d{1,5})x(\d{1,5})")
KNOWN_KEYS = {"id", "title", "scene", "mood", "prompt", "negative_prompt", "seed", "size", "tags", "style", "reference_images",
              "characters"}
SET_KEYS = {"name", "prompts", "characters", "style", "template"}
AUTO_SIZE = "auto"  # the service chooses the size (only where its capabilities say it can)
MAX_SEED = 2**32 - 1


_SHIPPED = shipped()  # the defaults of a bare ``Limits()``, from defaults.toml


@dataclass(frozen=True)
class Limits:
    max_bytes: int = _SHIPPED.promptset.max_bytes
    max_prompts: int = _SHIPPED.promptset.max_prompts
    max_chars: int = _SHIPPED.prompt.max_chars
    min_side: int = _SHIPPED.prompt.min_side
    max_side: int = _SHIPPED.prompt.max_side
    max_depth: int = _SHIPPED.promptset.max_depth  # objects and lists inside one another; metadata deeper than this is refused
    max_references: int = _SHIPPED.promptset.max_references
    max_characters: int = _SHIPPED.promptset.max_characters

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        p, s = settings.prompt, settings.promptset
        return cls(max_bytes=s.max_bytes, max_prompts=s.max_prompts, max_chars=p.max_chars, min_side=p.min_side,
                   max_side=p.max_side, max_depth=s.max_depth, max_references=s.max_references, max_characters=s.max_characters)


@dataclass(frozen=True)
class PromptSpec:
    id: str
    prompt: str
    title: str = ""
    scene: str = ""
    mood: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    size: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    style: str = ""  # its own, else the set's
    characters: tuple[Character, ...] = ()
    references: tuple[ReferenceSpec, ...] = ()  # its own; :meth:`all_references` adds its characters'
    template: str = ""  # the set's template; "" = the [prompt] template of the settings
    where: str = ""  # its JSON path (prompts[3]), for messages

    def all_references(self) -> tuple[ReferenceSpec, ...]:
        """The images sent with this prompt: its own, then each of its characters'."""
        return self.references + tuple(r for c in self.characters for r in c.references)

    def template_values(self) -> dict[str, str]:
        """Every field a template may name, as text: the prompt's own (extra ones included), its
        style, and its characters' ``names``, ``traits`` and ``characters`` (name with traits)."""
        values = {k: text for k, v in self.metadata.items() if (text := as_text(v)) is not None}
        values.update(id=self.id, title=self.title.strip(), prompt=self.prompt.strip(), scene=self.scene.strip(),
                      mood=self.mood.strip(), negative_prompt=self.negative_prompt.strip(), style=self.style.strip(),
                      names=", ".join(c.name for c in self.characters),
                      traits="; ".join(f"{c.name}: {c.traits}" for c in self.characters if c.traits),
                      characters="; ".join(c.described() for c in self.characters))
        return values


@dataclass(frozen=True)
class PromptSetSpec:
    name: str
    prompts: tuple[PromptSpec, ...]
    sha256: str
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    characters: tuple[Character, ...] = ()
    style: str = ""
    template: str = ""

    def references(self) -> list[ReferenceSpec]:
        """Every reference entry of the set, each once (a character's, once however many prompts show it)."""
        seen: dict[tuple[str, str], ReferenceSpec] = {}
        for ref in [r for c in self.characters for r in c.references] + [r for p in self.prompts for r in p.references]:
            seen.setdefault((ref.where, ref.path), ref)
        return list(seen.values())


def is_reserved_name(name: str) -> bool:
    """True for a name Windows reserves for a device: ``CON``, ``nul.txt``, ``Com0``, ``LPT9.tar.gz``..."""
    return name.split(".", 1)[0].rstrip(" ").lower() in RESERVED_NAMES


def _lone_surrogate(text: str) -> int:
    """Index of the first lone surrogate in ``text``, or -1."""
    try:
        text.encode("utf-8")
        return -1
    except UnicodeEncodeError as e:
        return e.start


def _key_path(path: str, key: str) -> str:
    """``prompts[0].camera``, or ``prompts[0]["odd key"]`` (ASCII-escaped, so it can always be printed)."""
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path or '$'}[{json.dumps(key)}]"


def _text_problems(doc: Any, max_depth: int) -> list[Problem]:
    """Lone surrogates in any string or key, and nesting past ``max_depth``, each with its JSON path.

    Walks with an explicit stack, so a deep document cannot exhaust Python's recursion limit.
    """
    problems: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(doc, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            at = _lone_surrogate(value)
            if at >= 0:
                problems.append(Problem(path or "$", f"contains a lone surrogate ({shown(value[at])}) at character {at}: "
                                                     "that is not valid Unicode text; remove it or write the intended character"))
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth >= max_depth:
            problems.append(Problem(path or "$", f"nested more than {max_depth} levels deep; flatten it"))
            continue
        children: list[tuple[Any, str]] = []
        if isinstance(value, dict):
            for key, child in value.items():
                child_path = _key_path(path, key)
                at = _lone_surrogate(key)
                if at >= 0:
                    problems.append(Problem(child_path, "this key contains a lone surrogate: that is not valid Unicode text"))
                    continue
                children.append((child, child_path))
        else:
            children = [(child, f"{path or '$'}[{i}]") for i, child in enumerate(value)]
        stack.extend((child, child_path, depth + 1) for child, child_path in reversed(children))
    return problems


def parse_size(text: str, limits: Limits = Limits()) -> tuple[int, int] | str:
    """``"1024x768"`` -> ``(1024, 768)``, or a message saying what is wrong."""
    m = SIZE_PATTERN.fullmatch(text.strip().lower())
    if not m:
        return f'expected "WIDTHxHEIGHT" such as "1024x1024", got "{shown(text)}"'
    w, h = int(m.group(1)), int(m.group(2))
    for label, v in (("width", w), ("height", h)):
        if not limits.min_side <= v <= limits.max_side:
            return f"{label} {v} is outside {limits.min_side}–{limits.max_side} pixels"
    return w, h


def _check_optional_string(item: dict[str, Any], key: str, path: str, problems: list[Problem], max_chars: int) -> str:
    value = item.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        problems.append(Problem(_key_path(path, key), f"expected a string, got {_type_name(value)}"))
        return ""
    if len(value) > max_chars:
        problems.append(Problem(_key_path(path, key), f"{len(value):,} characters, over the limit of {max_chars:,}"))
    return value


def _validate_item(item: Any, path: str, limits: Limits, problems: list[Problem],
                   known_characters: dict[str, Character] | None = None) -> PromptSpec | None:
    if not isinstance(item, dict):
        problems.append(Problem(path, f"expected an object with at least an id and a prompt, got {_type_name(item)}"))
        return None
    before = len(problems)

    pid = item.get("id")
    if "id" not in item:
        problems.append(Problem(f"{path}.id", "missing (every prompt needs an id)"))
    elif not isinstance(pid, str):
        problems.append(Problem(f"{path}.id", f"expected a string, got {_type_name(pid)}"))
    elif not ID_PATTERN.fullmatch(pid):
        why = "is empty" if pid == "" else ("is longer than 64 characters" if len(pid) > 64 else "has characters other than letters, digits, _ and -")
        problems.append(Problem(f"{path}.id", f'"{shown(pid)}" {why}; ids become folder names, so use 1–64 of A–Z a–z 0–9 _ -'))
    elif is_reserved_name(pid):
        problems.append(Problem(f"{path}.id", f'"{pid}" is a reserved device name on Windows and cannot be a folder name'))

    text = item.get("prompt")
    if "prompt" not in item:
        problems.append(Problem(f"{path}.prompt", "missing (every prompt needs prompt text)"))
    elif not isinstance(text, str):
        problems.append(Problem(f"{path}.prompt", f"expected a string, got {_type_name(text)}"))
    elif not text.strip():
        problems.append(Problem(f"{path}.prompt", "is empty"))
    elif len(text) > limits.max_chars:
        problems.append(Problem(f"{path}.prompt", f"{len(text):,} characters, over the limit of {limits.max_chars:,}"))

    title = _check_optional_string(item, "title", path, problems, limits.max_chars)
    scene = _check_optional_string(item, "scene", path, problems, limits.max_chars)
    mood = _check_optional_string(item, "mood", path, problems, limits.max_chars)
    negative = _check_optional_string(item, "negative_prompt", path, problems, limits.max_chars)

    seed = item.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        problems.append(Problem(f"{path}.seed", f"expected a whole number, got {_type_name(seed)}"))
        seed = None
    elif seed is not None and not 0 <= seed <= MAX_SEED:
        number = str(seed) if abs(seed) < 10**30 else f"a {len(str(abs(seed))):,}-digit number"
        problems.append(Problem(f"{path}.seed", f"{number} is outside 0–{MAX_SEED}"))

    size = item.get("size")
    if size is not None:
        if not isinstance(size, str):
            problems.append(Problem(f"{path}.size", f'expected a string like "1024x768", got {_type_name(size)}'))
        else:
            parsed = AUTO_SIZE if size.strip().lower() == AUTO_SIZE else parse_size(size, limits)
            if isinstance(parsed, str) and parsed != AUTO_SIZE:
                problems.append(Problem(f"{path}.size", parsed))
            else:
                size = parsed if isinstance(parsed, str) else f"{parsed[0]}x{parsed[1]}"

    tags = item.get("tags")
    clean_tags: list[str] = []
    if tags is not None:
        if not isinstance(tags, list):
            problems.append(Problem(f"{path}.tags", f"expected a list of strings, got {_type_name(tags)}"))
        else:
            for j, tag in enumerate(tags):
                if not isinstance(tag, str) or not tag.strip():
                    got = "an empty string" if isinstance(tag, str) else _type_name(tag)
                    problems.append(Problem(f"{path}.tags[{j}]", f"expected a non-empty string, got {got}"))
                else:
                    clean_tags.append(tag.strip())

    style = _check_optional_string(item, "style", path, problems, limits.max_chars)
    references = parse_references(item.get("reference_images"), f"{path}.reference_images", problems)
    characters = resolve_characters(item.get("characters"), f"{path}.characters", known_characters or {}, problems)
    count = len(references) + sum(len(c.references) for c in characters)
    if count > limits.max_references:
        problems.append(Problem(f"{path}.reference_images", f"{count} reference images with its characters', over the limit "
                                                            f"of {limits.max_references} per prompt"))

    if len(problems) > before:
        return None
    return PromptSpec(
        id=cast(str, pid),  # both checked above: a problem would have been added
        prompt=cast(str, text),
        title=title,
        scene=scene,
        mood=mood,
        negative_prompt=negative,
        seed=seed,
        size=size,
        tags=tuple(clean_tags),
        metadata={k: v for k, v in item.items() if k not in KNOWN_KEYS},
        style=style,
        characters=characters,
        references=references,
        where=path,
    )


def template_problems(template: str, prompts: tuple[PromptSpec, ...], where: str) -> list[Problem]:
    """A placeholder no prompt has (it would be sent literally), or one whose value is not text."""
    problems = [Problem(where, f"{{{name}}} names a field no prompt has; add \"{name}\" to the prompts that need it, or "
                               f"remove it from the template (fields: {', '.join(sorted(_field_names(prompts)))})")
                for name in unknown_placeholders(template, (p.metadata for p in prompts))]
    for name in placeholders(template):
        if name in STANDARD_FIELDS:
            continue
        for p in prompts:
            if name in p.metadata and as_text(p.metadata[name]) is None:
                problems.append(Problem(f"{p.where}.{name}", f"the template's {{{name}}} needs text, a number or a list of "
                                                             f"those here, not {_type_name(p.metadata[name])}"))
    return problems


def _field_names(prompts: tuple[PromptSpec, ...]) -> set[str]:
    names = set(STANDARD_FIELDS)
    for p in prompts:
        names.update(p.metadata)
    return names


def _id_problem(cid: str) -> str:
    if not ID_PATTERN.fullmatch(cid):
        return f'"{shown(cid, 80)}": use 1–64 of A–Z a–z 0–9 _ -'
    return ""


def validate_document(doc: Any, limits: Limits = Limits(), *, sha256: str = "", source: str = "") -> PromptSetSpec:
    """Validate an already-parsed JSON document. Raises :class:`PromptSetInvalid` listing every problem."""
    problems: list[Problem] = []
    if isinstance(doc, list):
        raise PromptSetInvalid(
            [Problem("$", 'expected an object {"prompts": [...]}, got a list; wrap the list as {"prompts": [ ... ]}')], source
        )
    if not isinstance(doc, dict):
        raise PromptSetInvalid([Problem("$", f'expected an object {{"prompts": [...]}}, got {_type_name(doc)}')], source)
    text_problems = _text_problems(doc, limits.max_depth)
    if text_problems:  # nothing else can be checked, or even quoted, safely
        raise PromptSetInvalid(text_problems, source)

    name = doc.get("name")
    if name is not None and not isinstance(name, str):
        problems.append(Problem("name", f"expected a string, got {_type_name(name)}"))
        name = None

    known = parse_characters(doc.get("characters"), problems, max_count=limits.max_characters, max_chars=limits.max_chars,
                             id_ok=_id_problem)
    set_style = _check_optional_string(doc, "style", "", problems, limits.max_chars)
    set_template = _check_optional_string(doc, "template", "", problems, limits.max_chars)
    if "template" in doc and isinstance(doc.get("template"), str) and not set_template.strip():
        problems.append(Problem("template", "is empty"))

    items = doc.get("prompts")
    specs: list[PromptSpec] = []
    if "prompts" not in doc:
        problems.append(Problem("prompts", "missing: the prompt set needs a \"prompts\" list"))
    elif not isinstance(items, list):
        problems.append(Problem("prompts", f"expected a list, got {_type_name(items)}"))
    elif not items:
        problems.append(Problem("prompts", "is empty: add at least one prompt"))
    elif len(items) > limits.max_prompts:
        problems.append(Problem("prompts", f"{len(items):,} prompts, over the limit of {limits.max_prompts:,}"))
    else:
        first_seen: dict[str, tuple[int, str]] = {}
        for i, item in enumerate(items):
            path = f"prompts[{i}]"
            spec = _validate_item(item, path, limits, problems, known)
            if spec is not None:
                spec = replace(spec, style=spec.style or set_style.strip(), template=set_template)
            pid = item.get("id") if isinstance(item, dict) else None
            if isinstance(pid, str) and ID_PATTERN.fullmatch(pid):
                key = pid.lower()
                if key in first_seen:
                    j, original = first_seen[key]
                    if original == pid:
                        problems.append(Problem(f"{path}.id", f'duplicate id "{pid}" (first at prompts[{j}])'))
                    else:
                        problems.append(
                            Problem(f"{path}.id", f'"{pid}" differs only in case from "{original}" at prompts[{j}]; ids become folder names')
                        )
                    spec = None
                else:
                    first_seen[key] = (i, pid)
            if spec is not None:
                specs.append(spec)

    if set_template and not problems:
        problems.extend(template_problems(set_template, tuple(specs), "template"))
    if problems:
        raise PromptSetInvalid(problems, source)
    return PromptSetSpec(
        name=name or (shown(Path(source).stem, 200) if source else "prompt set"),
        prompts=tuple(specs),
        sha256=sha256,
        source=source,
        metadata={k: v for k, v in doc.items() if k not in SET_KEYS},
        characters=tuple(known.values()),
        style=set_style.strip(),
        template=set_template,
    )


def parse_bytes(raw: bytes, limits: Limits = Limits(), *, source: str = "") -> PromptSetSpec:
    """Validate the raw bytes of an uploaded or on-disk prompt set."""
    if len(raw) > limits.max_bytes:
        raise PromptSetInvalid(
            [Problem("", f"the file is {len(raw):,} bytes, over the limit of {limits.max_bytes:,} bytes")], source
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptSetInvalid([Problem("", f"not UTF-8 text: byte {e.start} (0x{raw[e.start]:02x}) cannot be decoded")], source) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptSetInvalid([Problem("", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")], source) from None
    except RecursionError:
        raise PromptSetInvalid([Problem("", "nested too deeply to read (lists or objects inside one another hundreds of "
                                            f"levels deep); at most {limits.max_depth} levels are allowed")], source) from None
    except ValueError:  # Python refuses to read an integer of more than sys.get_int_max_str_digits() digits
        raise PromptSetInvalid([Problem("", _long_number(text))], source) from None
    return validate_document(doc, limits, sha256=hashlib.sha256(raw).hexdigest(), source=source)


def _long_number(text: str) -> str:
    """Where the integer too long for Python to read is, for the message."""
    limit = sys.get_int_max_str_digits()
    m = re.search(rf"\d{{{limit + 1},}}", text)
    where = ""
    if m:
        line = text.count("\n", 0, m.start()) + 1
        where = f" at line {line} column {m.start() - (text.rfind(chr(10), 0, m.start()) + 1) + 1}"
    digits = f" ({len(m.group()):,} digits)" if m else ""
    return f"a number{where} is too long{digits}: at most {limit:,} digits can be read (a seed is at most {MAX_SEED})"


def load_file(path: Path, limits: Limits = Limits()) -> PromptSetSpec:
    source = shown(str(path), 4096)  # a file name that is not valid UTF-8 is shown escaped
    try:
        size = path.stat().st_size
        if size > limits.max_bytes:
            raise PromptSetInvalid([Problem("", f"the file is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes")], source)
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PromptSetInvalid([Problem("", "no such file")], source) from None
    except IsADirectoryError:
        raise PromptSetInvalid([Problem("", "is a folder, not a JSON file")], source) from None
    except PermissionError:
        raise PromptSetInvalid([Problem("", "permission denied")], source) from None
    return parse_bytes(raw, limits, source=source)


# ---- The text sent to a provider -------------------------------------------------------------
DEFAULT_TEMPLATE = _SHIPPED.prompt.template


def compose_prompt(spec: PromptSpec, template: str = DEFAULT_TEMPLATE) -> str:
    """The text sent for ``spec``: its set's template (else ``template``) filled from its fields
    (see :mod:`.template`). Its characters and style always reach the provider: a template that
    names none of ``{names}``, ``{traits}``, ``{characters}`` gets "Characters: …" added, and one
    without ``{style}`` gets "Style: …"."""
    template = spec.template or template
    used = set(placeholders(template))
    if spec.characters and not used & set(CHARACTER_FIELDS):
        template += " Characters: {characters}."
    if spec.style.strip() and "style" not in used:
        template += " Style: {style}."
    return fill(template, spec.template_values())
