"""Analysis of a prompt before launch: length against each window, complexity, readability,
keywords, critical elements, and flags for what is likely to go wrong (each with a one-line fix).

Used by ``python -m pipeline check`` and the New run page. Errors (a prompt over a provider's
hard maximum) stop a launch; warnings do not. Every flag names its JSON path.
"""

from __future__ import annotations

import functools
import heapq
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.prompts.critical import NUMBER_WORDS, STOPWORDS, Anchor, offline_anchors
from pipeline.prompts.promptset import PromptSetSpec, compose_prompt
from pipeline.prompts.windows import Fit, Window

RELATION_WORDS = re.compile(
    r"\b(?:on top of|in front of|next to|behind|beside|under|underneath|below|above|over|inside|between|on|near|around|"
    r"holding|riding|wearing|carrying|eating|chasing|looking at|sitting on|standing on|leaning on)\b", re.IGNORECASE)
NEGATIVES = re.compile(r"\b(?:no|not|without|never|avoid|don't|do not|doesn't|isn't|free of|lacking)\s+(?:any\s+|a\s+|the\s+)?"
                       r"([^\W\d_][\w-]*)", re.IGNORECASE)
TEXT_REQUESTS = re.compile(r"[\"“«„][^\"“”«»„]{1,120}[\"”»]|\b(?:says|saying|reads|reading|written|lettering|caption|"
                           r"text|typography|logo|sign that|the words?|headline|title card)\b", re.IGNORECASE)
STYLE_FAMILIES: dict[str, tuple[str, ...]] = {
    "photograph": ("photo", "photograph", "photorealistic", "photorealism", "dslr", "35mm", "hyperrealistic", "realistic"),
    "painting": ("oil painting", "watercolor", "watercolour", "acrylic", "gouache", "impressionist", "painting"),
    "drawing": ("sketch", "pencil drawing", "charcoal drawing", "line art", "ink drawing", "drawing"),
    "cartoon": ("cartoon", "anime", "manga", "comic", "cel-shaded", "pixar"),
    "3d render": ("3d render", "octane render", "unreal engine", "cgi", "blender render"),
    "pixel art": ("pixel art", "8-bit", "16-bit"),
}
CONFLICTS: tuple[tuple[str, str], ...] = (
    ("black and white", "vivid colours"), ("monochrome", "colorful"), ("minimalist", "highly detailed"),
    ("minimalist", "intricate"), ("daytime", "night"), ("noon", "midnight"),
)
_WORD = re.compile(r"[^\W\d_][\w'’-]*")
_FAMILY_PATTERNS = {family: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")
                    for family, words in STYLE_FAMILIES.items()}
_CONFLICT_PATTERNS = [(a, b, re.compile(rf"\b{re.escape(a)}\b"), re.compile(rf"\b{re.escape(b)}\b")) for a, b in CONFLICTS]


@dataclass(frozen=True)
class ToolLimits:
    """Thresholds for the flags (``[prompt_tools]`` in defaults.toml)."""

    reliable_count: int = 4  # more of one thing than this is rarely rendered exactly
    keywords: int = 8

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> ToolLimits:
        return cls(reliable_count=int(table.get("reliable_count", cls.reliable_count)),
                   keywords=int(table.get("keywords", cls.keywords)))


@dataclass(frozen=True)
class Flag:
    path: str
    level: str  # "error" | "warning"
    kind: str  # over_max | over_window | negative | style_conflict | count | text
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.level}: {self.path}: {self.message}. Fix: {self.fix}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "level": self.level, "kind": self.kind, "message": self.message, "fix": self.fix}


@dataclass(frozen=True)
class PromptAnalysis:
    path: str
    prompt_id: str
    text: str
    fits: tuple[Fit, ...]
    elements: tuple[Anchor, ...]
    relations: int
    counts: tuple[str, ...]
    readability: float | None  # Flesch reading ease (higher = easier); None for text that is not mostly English
    keywords: tuple[str, ...]
    flags: tuple[Flag, ...] = field(default=())

    @property
    def compress_for(self) -> tuple[str, ...]:
        """Providers whose window this prompt is over (it is compressed for them)."""
        return tuple(f.window.provider for f in self.fits if f.over_window and not f.over_max)

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path, "id": self.prompt_id, "chars": len(self.text),
            "windows": [{"provider": f.window.provider, "model": f.window.model, "chars": f.chars, "window_chars": f.window.chars,
                         "tokens": f.tokens, "window_tokens": f.window.tokens, "tokenizer": f.window.tokenizer,
                         "max_chars": f.window.max_chars, "share": round(f.share, 3), "over_window": f.over_window,
                         "over_max": f.over_max} for f in self.fits],
            "complexity": {"elements": len(self.elements), "relations": self.relations, "counts": list(self.counts)},
            "readability": self.readability, "keywords": list(self.keywords),
            "critical_elements": [{"category": a.category, "label": a.label} for a in self.elements],
            "compress_for": list(self.compress_for), "flags": [f.as_dict() for f in self.flags],
        }


def _english(text: str) -> bool:
    if text.isascii():
        return any(c.isalpha() for c in text)
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.9


@functools.lru_cache(maxsize=65536)
def _syllables(word: str) -> int:
    import textstat  # with its dictionaries (63 modules): loaded by the first prompt analysed, not by every page at start-up

    return int(textstat.syllable_count(word))


def reading_ease(text: str) -> float:
    """Flesch reading ease (higher = easier), from textstat's words, sentences and syllables (the
    CMU dictionary); syllables are counted per distinct word and cached, so a 10,000-prompt set
    costs one dictionary lookup per word it uses, not per occurrence."""
    import textstat  # see _syllables

    words = textstat.remove_punctuation(text).lower().split()
    if not words:
        return 0.0
    sentences = max(int(textstat.sentence_count(text)), 1)
    syllables = sum(_syllables(w) for w in words)
    return 206.835 - 1.015 * (len(words) / sentences) - 84.6 * (syllables / len(words))


def keywords(text: str, limit: int) -> tuple[str, ...]:
    """The content words said most often (ties: the earlier first)."""
    words = [w.lower().strip("'’-") for w in _WORD.findall(text)]
    counts = Counter(w for w in words if w not in STOPWORDS and len(w) > 2)  # in order of first use
    return tuple(heapq.nsmallest(limit, counts, key=lambda w: -counts[w]))  # stable: ties keep that order


def _styles(low: str) -> list[str]:
    return [family for family, pattern in _FAMILY_PATTERNS.items() if pattern.search(low)]


def _flags(path: str, text: str, fits: Sequence[Fit], counts: Sequence[tuple[int, str]], limits: ToolLimits) -> list[Flag]:
    flags: list[Flag] = []
    for f in fits:
        w = f.window
        if f.over_max:
            flags.append(Flag(path, "error", "over_max", f"{f.chars:,} characters, over {w.provider}'s limit of {w.max_chars:,}",
                              f"shorten it to at most {w.max_chars:,} characters, or drop {w.provider} from the chain"))
        elif f.over_window:
            flags.append(Flag(path, "warning", "over_window", f"over {w.provider}'s window ({f.describe()})",
                              f"it will be compressed for {w.provider}; shorten it yourself to keep control of the wording"))
    low = text.lower()
    negatives = [m.group(0) for m in NEGATIVES.finditer(text)]
    if negatives:
        shown = ", ".join(f'"{n}"' for n in negatives[:3])
        flags.append(Flag(path, "warning", "negative", f"negatives in the positive prompt ({shown}) often draw the thing they exclude",
                          "move them to negative_prompt, or describe what should be there instead"))
    styles = _styles(low)
    if len(styles) > 1:
        flags.append(Flag(path, "warning", "style_conflict", f"conflicting styles: {' and '.join(styles)}",
                          f"pick one medium (e.g. {styles[0]}) and drop the other"))
    for a, b, a_pattern, b_pattern in _CONFLICT_PATTERNS:
        if a_pattern.search(low) and b_pattern.search(low):
            flags.append(Flag(path, "warning", "style_conflict", f'"{a}" conflicts with "{b}"', f'keep "{a}" or "{b}", not both'))
    big = [label for n, label in counts if n > limits.reliable_count]
    if big:
        flags.append(Flag(path, "warning", "count", f"counts above {limits.reliable_count} ({', '.join(big[:3])}) are rarely rendered exactly",
                          f"ask for at most {limits.reliable_count}, or say 'a group of' / 'many' if the exact number does not matter"))
    if TEXT_REQUESTS.search(text):
        flags.append(Flag(path, "warning", "text", "asks for text in the image, which many models misspell",
                          "keep the text short (1–3 words) in quotes, and prefer a provider known for text (gpt-image, Ideogram-class)"))
    return flags


def analyse(text: str, windows: Sequence[Window], *, path: str = "prompt", prompt_id: str = "",
            limits: ToolLimits = ToolLimits()) -> PromptAnalysis:
    fits = tuple(w.fit(text) for w in windows)
    anchors = offline_anchors(text)
    counts: list[tuple[int, str]] = []
    for a in anchors:
        if a.category == "count":
            number = a.terms[0]
            counts.append((int(number) if number.isdigit() else NUMBER_WORDS.get(number, 0), a.label))
    readability = reading_ease(text) if _english(text) else None
    return PromptAnalysis(
        path=path, prompt_id=prompt_id, text=text, fits=fits, elements=tuple(anchors),
        relations=len(RELATION_WORDS.findall(text)), counts=tuple(label for _, label in counts),
        readability=round(readability, 1) if readability is not None else None,
        keywords=keywords(text, limits.keywords), flags=tuple(_flags(path, text, fits, counts, limits)),
    )


def analyse_set(spec: PromptSetSpec, windows: Sequence[Window], template: str, limits: ToolLimits = ToolLimits()) -> list[PromptAnalysis]:
    """Every prompt of a set as it will be sent (after the template), each located by its JSON path."""
    return [analyse(compose_prompt(p, template), windows, path=f"prompts[{i}].prompt", prompt_id=p.id, limits=limits)
            for i, p in enumerate(spec.prompts)]


def errors(analyses: Sequence[PromptAnalysis]) -> list[Flag]:
    return [f for a in analyses for f in a.flags if f.level == "error"]
