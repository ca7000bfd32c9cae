"""Reference images named in a prompt set: what the JSON may say, checked before any file is read.

A prompt (or a character) names its images in ``reference_images``: one entry or a list, each a
path inside the bundle (``"faces/ada.png"``) or an object ``{"path": ..., "role": ...}`` with a
role among :data:`~pipeline.components.REFERENCE_ROLES` (``subject`` when not given). A path is
relative to the bundle's root: an absolute path, a ``..`` segment or a backslash is refused here
with its JSON path; whether the file is there and is an image is the bundle loader's check.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.components import REFERENCE_ROLES
from pipeline.display import shown
from pipeline.errors import Problem, PromptSetInvalid

MAX_PATH_CHARS = 500
_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True)
class ReferenceSpec:
    """One reference image: where the JSON named it, and (once a bundle is read and the image
    checked) its type, hash, size and how to read it again. The bytes are not kept: a 50-MB
    bundle would otherwise sit in memory twice (the upload and its images) until the launch."""

    path: str  # inside the bundle, "/" between folders, no "." or ".." segments
    role: str
    where: str  # the JSON path of the entry, for messages
    character: str = ""  # the character's id, for a character's own reference
    mime_type: str = ""
    sha256: str = ""
    byte_size: int = 0
    reader: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        """The image's bytes, refused (with its JSON path) if they are not the ones checked."""
        if self.reader is None:
            raise PromptSetInvalid([Problem(self.where, f'"{shown(self.path, 200)}" was never read from a bundle')])
        data = self.reader()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise PromptSetInvalid([Problem(self.where, f'"{shown(self.path, 200)}" changed after the bundle was checked; '
                                                        "load the prompt set again")])
        return data


def _path_problem(path: str) -> str:
    """Why ``path`` cannot name a file inside a bundle, or ""."""
    if not path.strip():
        return "is empty; name an image file inside the bundle, such as \"images/ada.png\""
    if len(path) > MAX_PATH_CHARS:
        return f"is {len(path):,} characters long, over {MAX_PATH_CHARS}"
    if "\\" in path:
        return f'"{shown(path)}" has a backslash; separate folders with "/"'
    if path.startswith("/") or _DRIVE.match(path):
        return f'"{shown(path)}" is an absolute path; name the file relative to the bundle, such as "images/ada.png"'
    if ".." in path.split("/"):
        return f'"{shown(path)}" leads out of the bundle (".."); only files inside the bundle can be used'
    if any(ord(ch) < 32 for ch in path):
        return f'"{shown(path)}" contains a control character'
    return ""


def normalized(path: str) -> str:
    """``"./images//a.png"`` -> ``"images/a.png"`` (a path :func:`_path_problem` accepted)."""
    return "/".join(part for part in path.split("/") if part not in ("", "."))


def type_name(value: Any) -> str:
    """A JSON value's type as a message names it: string, number, list, object, boolean, null."""
    return "null" if value is None else {bool: "boolean", int: "number", float: "number", str: "string", list: "list",
                                         dict: "object"}.get(type(value), type(value).__name__)


def _entry(value: Any, where: str, character: str, problems: list[Problem]) -> ReferenceSpec | None:
    role = "subject"
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"path", "role"})
        if unknown:
            problems.append(Problem(where, f"unknown key(s) {', '.join(json.dumps(k) for k in unknown)}; an entry has \"path\" "
                                           "and an optional \"role\""))
            return None
        role_value = value.get("role", "subject")
        if role_value not in REFERENCE_ROLES:
            got = f'"{shown(role_value)}"' if isinstance(role_value, str) else type_name(role_value)
            problems.append(Problem(f"{where}.role", f"{got} is not a role; use one of {', '.join(REFERENCE_ROLES)}"))
            return None
        role = str(role_value)
        if "path" not in value:
            problems.append(Problem(f"{where}.path", "missing: the image file inside the bundle"))
            return None
        value, where_path = value["path"], f"{where}.path"
    else:
        where_path = where
    if not isinstance(value, str):
        problems.append(Problem(where_path, f'expected a file path such as "images/ada.png" or {{"path": ..., "role": ...}}, '
                                            f"got {type_name(value)}"))
        return None
    why = _path_problem(value)
    if why:
        problems.append(Problem(where_path, why))
        return None
    return ReferenceSpec(path=normalized(value), role=role, where=where_path, character=character)


def parse_references(value: Any, where: str, problems: list[Problem], *, character: str = "") -> tuple[ReferenceSpec, ...]:
    """The entries of a ``reference_images`` field (one, or a list), each problem with its path."""
    if value is None:
        return ()
    entries = value if isinstance(value, list) else [value]
    paths = [f"{where}[{i}]" for i in range(len(entries))] if isinstance(value, list) else [where]
    found: list[ReferenceSpec] = []
    for entry, path in zip(entries, paths, strict=True):
        ref = _entry(entry, path, character, problems)
        if ref is not None:
            found.append(ref)
    masks = [r for r in found if r.role == "mask"]
    if len(masks) > 1:
        problems.append(Problem(masks[1].where, f"a second mask (the first is at {masks[0].where}); a prompt has at most one"))
    return tuple(found)
