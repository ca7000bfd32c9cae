"""The offline extractive compressor, and what any compression reports.

No model, no network: it keeps the prompt's own words. In stages, each tried only when the one
before does not fit the window:

1. **Select clauses.** The prompt is split into clauses (at ``. ! ? ; ,`` and line breaks). A
   greedy set cover picks the clauses that name every critical element (fewest characters per
   element first); the remaining room is filled with the other clauses in the order they carry
   the most elements per character, and the kept clauses are put back in their original order.
   Repeated clauses (concatenated scenes often repeat) are kept once.
2. **Telegraphic clauses.** Function words are dropped from the kept clauses ("a red fox
   sitting on the bench" → "red fox sitting bench"); image models read such lists well.
3. **Elements only.** The text becomes the list of the elements' own terms.

If even the elements do not fit, the result says so (``window_hit`` is false) and keeps every
element: a prompt is never cut to fit silently. Text is split only at whitespace and
punctuation and never sliced, so CJK, emoji, right-to-left runs and combining marks come out
as they went in.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pipeline.prompts.critical import STOPWORDS, Anchor, missing, term_pattern

_CLAUSE = re.compile(r"[^.!?;,\n。！？；，、]+[.!?;,\n。！？；，、]*")


@dataclass(frozen=True)
class Compression:
    """A compressed prompt and how it went: the original is always kept beside it."""

    original: str
    text: str
    method: str  # "offline" or the service that compressed it
    elements: int  # critical elements in the original
    missing: tuple[str, ...] = ()  # labels of the elements the text dropped (empty when accepted)
    window_hit: bool = True
    model: str = ""
    cost_usd: float | None = None
    attempts: tuple[dict[str, str], ...] = field(default=())  # services tried before this one, and why each was not used

    @property
    def ratio(self) -> float:
        """Compressed length over original length, in characters."""
        return len(self.text) / max(len(self.original), 1)

    @property
    def kept(self) -> int:
        return self.elements - len(self.missing)

    def report(self) -> dict[str, object]:
        return {"method": self.method, "model": self.model, "chars_before": len(self.original), "chars_after": len(self.text),
                "ratio": round(self.ratio, 3), "elements_kept": self.kept, "elements": self.elements,
                "missing": list(self.missing), "window_hit": self.window_hit, "cost_usd": self.cost_usd,
                "attempts": list(self.attempts)}


def _clauses(text: str) -> list[str]:
    return [c.strip() for c in _CLAUSE.findall(text) if c.strip(" \n.!?;,。！？；，、")]


def _join(clauses: Sequence[str]) -> str:
    text = " ".join(c.strip() for c in clauses)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"[,;]\s*$", "", text)
    return text if not text or text[-1] in ".!?。！？" else text + "."


def _telegraphic(clause: str) -> str:
    kept = [w for w in clause.split() if w.strip(".,;:!?\"'“”").lower() not in STOPWORDS or not w.isascii()]
    return " ".join(kept) or clause


def _covers(clauses: list[str], anchors: Sequence[Anchor]) -> list[set[int]]:
    """For each clause, the anchors it names whole: one scan of the joined text per term (a
    clause-by-anchor test of every pair is quadratic on a 10,000-character prompt)."""
    joined = "\0".join(clauses)  # a separator no term can match across
    starts = list(itertools.accumulate((len(c) + 1 for c in clauses[:-1]), initial=0))
    covers: list[set[int]] = [set() for _ in clauses]
    for index, anchor in enumerate(anchors):
        where: set[int] | None = None
        for term in anchor.terms:
            found = {bisect.bisect_right(starts, m.start()) - 1 for m in term_pattern(term).finditer(joined)}
            where = found if where is None else where & found
        for i in where or ():
            covers[i].add(index)
    return covers


def _select(clauses: list[str], anchors: Sequence[Anchor], fits: Callable[[str], bool]) -> list[int]:
    covers = _covers(clauses, anchors)
    chosen: list[int] = []
    uncovered = set().union(*covers) if covers else set()
    while uncovered:
        best = max((i for i in range(len(clauses)) if i not in chosen and covers[i] & uncovered),
                   key=lambda i: (len(covers[i] & uncovered) / max(len(clauses[i]), 1), -i))
        chosen.append(best)
        uncovered -= covers[best]
    if not fits(_join([clauses[j] for j in sorted(chosen)])):
        return sorted(chosen)  # no room left for anything more
    rest = sorted((i for i in range(len(clauses)) if i not in chosen),
                  key=lambda i: (-(len(covers[i]) + 1) / max(len(clauses[i]), 1), i))
    for i in rest:
        trial = sorted([*chosen, i])
        if fits(_join([clauses[j] for j in trial])):
            chosen = trial
    return sorted(chosen)


def compress_offline(text: str, anchors: Sequence[Anchor], fits: Callable[[str], bool]) -> Compression:
    """``text`` made to fit (``fits``) keeping every anchor, by the stages above."""
    total = len(anchors)
    if fits(text):
        return Compression(text, text, "offline", total)
    seen: set[str] = set()
    clauses: list[str] = []
    for c in _clauses(text):
        key = c.lower().strip(" .!?;,")
        if key not in seen:
            seen.add(key)
            clauses.append(c)
    chosen = [clauses[i] for i in _select(clauses, anchors, fits)]
    candidates = [_join(chosen), _join([_telegraphic(c) for c in chosen])]
    terms = " ".join(" ".join(a.terms) for a in anchors)
    candidates.append(_join([", ".join(dict.fromkeys(" ".join(a.terms) for a in anchors))]) if terms else _join(chosen[:1]))
    for candidate in candidates:
        if candidate and fits(candidate) and not missing(anchors, candidate):
            return Compression(text, candidate, "offline", total)
    # Nothing fits: the shortest text that keeps every element, marked as over the window.
    whole = [c for c in candidates if c and not missing(anchors, c)] or [text]
    best = min(whole, key=len)
    return Compression(text, best, "offline", total, window_hit=fits(best))
