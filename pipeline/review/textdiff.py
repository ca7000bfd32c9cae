"""Word-level differences between two prompts, for the refinement diff in the gallery."""

from __future__ import annotations

import difflib
import html
import re
from dataclasses import dataclass
from typing import Literal

_TOKEN = re.compile(r"\s+|[^\s]+")


@dataclass(frozen=True)
class Part:
    op: Literal["equal", "insert", "delete"]
    text: str


def word_diff(old: str, new: str) -> list[Part]:
    """``old`` → ``new`` as runs of kept, inserted and deleted words (whitespace rides along)."""
    a, b = _TOKEN.findall(old), _TOKEN.findall(new)
    parts: list[Part] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            parts.append(Part("equal", "".join(a[i1:i2])))
        if tag in ("delete", "replace"):
            parts.append(Part("delete", "".join(a[i1:i2])))
        if tag in ("insert", "replace"):
            parts.append(Part("insert", "".join(b[j1:j2])))
    return [p for p in parts if p.text]


def diff_counts(parts: list[Part]) -> tuple[int, int]:
    """Words inserted and deleted."""
    def words(op: str) -> int:
        return sum(len(p.text.split()) for p in parts if p.op == op)
    return words("insert"), words("delete")


def diff_html(parts: list[Part]) -> str:
    """The diff as escaped HTML: insertions in green ``<ins>``, deletions struck through in red ``<del>``."""
    styles = {
        "insert": '<ins style="background:rgba(46,160,67,.35);text-decoration:none">{}</ins>',
        "delete": '<del style="background:rgba(248,81,73,.35)">{}</del>',
        "equal": "<span>{}</span>",
    }
    return "".join(styles[p.op].format(html.escape(p.text)) for p in parts)
