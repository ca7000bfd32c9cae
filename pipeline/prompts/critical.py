"""The critical elements of a prompt as words that must survive a rewrite.

A compression or an enhancement may reword a prompt, but each thing the prompt asks for must
still be named in the result: every subject, every count, every named thing, every rendered
text, every colour. An :class:`Anchor` is one such element with the term(s) that show it is
still there; :func:`missing` lists the anchors a rewrite dropped.

Anchors come from the judge's once-per-prompt decomposition when there is one
(:func:`anchors_from_elements`: the terms in each critical element's tuple), and from
:func:`offline_anchors` otherwise: a rule-based reading that finds subjects (the head noun after
an article or a number), counts, quoted text, proper names, colours, and runs of non-Latin
script (kept whole, since no rule here can split them safely).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pipeline.components import Element
from pipeline.prompts import lexicon

NUMBER_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
                "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "twenty": 20, "dozen": 12,
                "hundred": 100, "thousand": 1000}
DIGIT_WORDS = {str(v): k for k, v in NUMBER_WORDS.items() if k != "dozen"}
DETERMINERS = {"a", "an", "the", "this", "that", "these", "those", "its", "his", "her", "their", "my", "our", "some", "many",
               "several", "few", "each", "every", "no", "another", "both"}
STOPWORDS = frozenset(
    "a an the and or but of in on at to from by for with without into onto over under above below behind beside near next "
    "between through across along around against is are was were be been being has have had it its this that these those "
    "there here which who whom whose what where when while as than then so such very really quite just also too not no "
    "nor only own same some any each every all both few more most other another his her their our my your them they he she "
    "we you i me us him up down out off again further once do does did doing can could should would will shall may might "
    "must about like looking made make making set sits sitting standing stands seen shown showing wearing holding it's "
    "one's".split()
)
# Nouns that look like verb forms (the "-ing"/"-ed" rule would otherwise stop before them).
ING_NOUNS = frozenset("painting building clothing ceiling wedding drawing ring king string swing wing evening morning pudding "
                      "sibling earring railing awning bedding stuffing frosting icing lighting landing carving etching "
                      "sled bed shed red".split())
_QUOTED = re.compile(r"[\"“”«»„]([^\"“”«»„]{1,120})[\"“”«»„]|(?:^|(?<=\s))'([^']{1,120})'(?=[\s.,;:!?]|$)")
_WORDS = re.compile(r"[^\W\d_][\w'’-]*|\d+")
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b([A-Z][\w'’-]+(?:\s+(?:of|the|de|van|von|da|la|le)?\s*[A-Z][\w'’-]+)*)")
_NON_LATIN = re.compile(r"[^\W\d_a-zA-Z\u00C0-\u024F]+(?:[\s\u200c\u200d\u0300-\u036f]*[^\W\d_a-zA-Z\u00C0-\u024F]+)*")
_EMOJI = re.compile("[\U0001F000-\U0001FAFF\u2600-\u27BF]+")
_COLOUR_WORDS = frozenset(lexicon.COLOURS) | frozenset(lexicon.ALIASES)


@dataclass(frozen=True)
class Anchor:
    """One critical element: ``label`` says what it is; every one of ``terms`` must be in the text."""

    category: str  # entity | count | text_rendering | named | attribute | script
    label: str
    terms: tuple[str, ...]


@functools.lru_cache(maxsize=4096)
def term_pattern(term: str) -> re.Pattern[str]:
    """How ``term`` is found in a text: whole words, any case, singular or plural, a number as word or digits."""
    words = term.split()
    if not words:
        return re.compile(r"(?!x)x")
    if term.isascii():
        variants = [re.escape(w) for w in words]
        last = words[-1].lower()
        if last in NUMBER_WORDS and NUMBER_WORDS[last] < 1000:
            variants[-1] = f"(?:{re.escape(last)}|{NUMBER_WORDS[last]})"
        elif last in DIGIT_WORDS:
            variants[-1] = f"(?:{re.escape(last)}|{DIGIT_WORDS[last]})"
        elif last.isalpha():  # singular and plural are the same element
            stem = re.sub(r"(?:es|s)$", "", last) if len(last) > 3 else last
            variants[-1] = f"{re.escape(stem)}(?:s|es|e)?" if stem != last else f"{re.escape(last)}(?:s|es)?"
        return re.compile(r"(?<![\w])" + r"[\s-]+".join(variants) + r"(?![\w])", re.IGNORECASE)
    return re.compile(re.escape(term), re.IGNORECASE)


def present(anchor: Anchor, text: str) -> bool:
    return all(term_pattern(t).search(text) for t in anchor.terms)


def missing(anchors: Iterable[Anchor], text: str) -> list[Anchor]:
    """The anchors ``text`` no longer names."""
    return [a for a in anchors if not present(a, text)]


def _dedupe(anchors: Iterable[Anchor]) -> list[Anchor]:
    seen: set[frozenset[str]] = set()
    out: list[Anchor] = []
    for a in anchors:
        key = frozenset(t.lower() for t in a.terms)
        if a.terms and key not in seen:
            seen.add(key)
            out.append(a)
    return out


def _content(words: Sequence[str]) -> list[str]:
    return [w for w in words if w.lower() not in STOPWORDS and len(w) > 1]


def _head_after(words: list[str], start: int) -> str:
    """The head noun of the phrase starting at ``words[start]``: its last word before a stopword,
    a verb-like word (-ing, -ed) or four words, whichever comes first."""
    head = ""
    for w in words[start:start + 4]:
        low = w.lower()
        verb_like = len(low) > 5 and low.endswith(("ing", "ed")) and low not in ING_NOUNS
        if low in STOPWORDS or low in DETERMINERS or verb_like or low.isdigit():
            break
        head = w
    return head


def offline_anchors(prompt: str) -> list[Anchor]:
    """The prompt's critical elements, read by rule (no model)."""
    out: list[Anchor] = []
    for m in _QUOTED.finditer(prompt):
        quoted = (m.group(1) or m.group(2) or "").strip()
        if quoted:
            out.append(Anchor("text_rendering", f'text "{quoted}"', (quoted,)))
    for sentence in re.split(r"(?<=[.!?;])\s+|\n+", prompt):
        for m in _NAME.finditer(sentence):
            name = m.group(1)
            if name.lower() not in STOPWORDS and name.lower() not in DETERMINERS and len(name) > 1:
                out.append(Anchor("named", name, (name,)))
    for m in _NON_LATIN.finditer(prompt):
        run = m.group(0).strip()
        if run:
            out.append(Anchor("script", run, (run,)))
    for m in _EMOJI.finditer(prompt):
        out.append(Anchor("script", m.group(0), (m.group(0),)))
    for clause in re.split(r"[,.;:!?()\[\]\n。，；：！？、]+", prompt):
        out.extend(_clause_anchors(_WORDS.findall(clause)))
    return _dedupe(out)


def _clause_anchors(words: list[str]) -> list[Anchor]:
    out: list[Anchor] = []
    lowered = [w.lower() for w in words]
    for i, low in enumerate(lowered):
        if (low in NUMBER_WORDS and low != "one") or (low.isdigit() and len(low) <= 4):
            head = _head_after(words, i + 1)
            if head:
                out.append(Anchor("count", f"{low} {head}", (low, head)))
        elif low in DETERMINERS or low == "one":
            head = _head_after(words, i + 1)
            if head and head.lower() not in _COLOUR_WORDS:
                out.append(Anchor("entity", head.lower(), (head.lower(),)))
        if low in _COLOUR_WORDS:
            out.append(Anchor("attribute", f"colour {low}", (low,)))
    return out


_TUPLE_ARGS = re.compile(r"\(([^()]*)\)")


def anchors_from_elements(elements: Iterable[Element]) -> list[Anchor]:
    """Anchors from a judge's decomposition: the arguments of each critical element's tuple
    (``attribute - color (fox, red)`` → ``fox`` and ``red``); a long argument keeps its content words."""
    out: list[Anchor] = []
    for e in elements:
        if not e.critical:
            continue
        m = _TUPLE_ARGS.search(e.tuple_text)
        if not m:
            continue
        terms: list[str] = []
        for arg in (a.strip() for a in m.group(1).split(",")):
            words = arg.split()
            if not words:
                continue
            terms.extend([arg] if len(words) <= 3 else _content(_WORDS.findall(arg)))
        if terms:
            out.append(Anchor(e.category, e.tuple_text or e.question, tuple(dict.fromkeys(terms))))
    return _dedupe(out)


def anchors_for(prompt: str, elements: Iterable[Element] = ()) -> list[Anchor]:
    """Every critical element: the decomposition's, plus what the rule-based reading finds (a
    decomposition may miss a count or a name; keeping more is never wrong)."""
    return _dedupe([*anchors_from_elements(elements), *offline_anchors(prompt)])
