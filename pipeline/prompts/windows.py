"""How much of a prompt each provider reads: its window, in characters and tokens.

A provider's capability table (``[providers.X.capabilities]``) gives its hard maximum
(``max_prompt_chars``: over it the service refuses the call) and its *window*: the part of the
prompt the model actually reads (``prompt_window_chars``, and ``prompt_window_tokens`` counted by
``tokenizer``). Text past the window is silently ignored by the model, so a prompt over it is
compressed for that provider rather than sent as it is.

Counting is in characters (Python ``str`` code points), never bytes: a CJK or emoji prompt is
measured as a reader sees it.

Tokens are an *estimate*, documented here because no well-kept package ships the real
vocabularies without PyTorch (the CLIP BPE file is only in ``open-clip-torch``/``openai-clip``,
which install torch; T5's ``spiece.model`` is in no package at all, only on model hubs, which a
run may not reach). The estimates follow each tokenizer's own pre-tokenisation and err on the
high side, so a prompt said to fit does fit:

- ``clip`` (SD 1.5 / SDXL, 77 tokens incl. start and end): text lower-cased and split like CLIP's
  BPE (letter runs, single digits, punctuation runs). A letter run of up to 7 ASCII letters is one
  token (CLIP's 49k vocabulary holds nearly every common English word whole), longer ones one per
  4 letters; other scripts are byte-level BPE, one token per 1.5 UTF-8 bytes; each digit is a
  token; a punctuation mark one token; then 10 % more. Calibrated once against CLIP's real BPE
  (the vocabulary in the open-clip-torch wheel) on the 706 PartiPrompts over 40 characters plus
  CJK, Arabic, Hebrew, Korean, emoji and combining-mark scenes: on average 22 % over the real
  count, under it for 2 of 712 (by at most 14 %).
- ``t5`` (FLUX, 256/512 tokens incl. the end token): SentencePiece unigram over words; a word of
  up to 6 ASCII letters is one piece, longer ones one per 5 letters, plus the leading-space piece
  for words T5 splits; each digit and punctuation mark a piece; characters outside T5's mostly
  Latin vocabulary one piece each.
- ``estimate`` (any other token window): one token per 4 characters, the usual English figure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TOKENIZERS = ("clip", "t5", "estimate", "")
_CLIP_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_T5_PIECES = re.compile(r"[^\W\d_]+|\d|[^\s\w]|_")


def _ascii_letters(piece: str) -> bool:
    return piece.isascii() and piece.isalpha()


CLIP_MARGIN = 1.1  # calibrated: see the module docstring


def _clip_tokens(text: str) -> int:
    count = 0
    for piece in _CLIP_PIECES.findall(text.lower()):
        if _ascii_letters(piece) or piece.startswith("'"):
            count += 1 if len(piece) <= 7 else math.ceil(len(piece) / 4)
        elif piece.isalpha():  # another script: byte-level BPE, about 1.5 UTF-8 bytes a token
            count += math.ceil(len(piece.encode("utf-8")) / 1.5)
        elif piece.isdigit():
            count += 1
        else:  # punctuation, symbols, emoji
            count += sum(1 if ch.isascii() else math.ceil(len(ch.encode("utf-8")) / 2) for ch in piece)
    return 2 + math.ceil(count * CLIP_MARGIN)  # + <|startoftext|> and <|endoftext|>


def _t5_tokens(text: str) -> int:
    count = 1  # </s>
    for piece in _T5_PIECES.findall(text):
        if _ascii_letters(piece):
            count += 1 if len(piece) <= 6 else 1 + math.ceil(len(piece) / 5)
        elif piece.isalpha():
            count += len(piece)  # mostly <unk> or single characters
        else:
            count += 1
    return count


def count_tokens(text: str, tokenizer: str) -> int:
    """The estimated number of tokens ``tokenizer`` makes of ``text`` (0 for ``""``: no token window)."""
    if tokenizer == "clip":
        return _clip_tokens(text)
    if tokenizer == "t5":
        return _t5_tokens(text)
    if tokenizer == "estimate":
        return math.ceil(len(text) / 4)
    return 0


@dataclass(frozen=True)
class Window:
    """What one provider (with its model) reads of a prompt, from its capability table."""

    provider: str
    model: str = ""
    max_chars: int = 10000  # hard maximum: over it the prompt is refused
    chars: int = 10000  # the window in characters
    tokens: int = 0  # the window in tokens (0 = none)
    tokenizer: str = ""

    def fit(self, text: str) -> Fit:
        return Fit(self, len(text), count_tokens(text, self.tokenizer) if self.tokens else 0)

    def char_budget(self, text: str) -> int:
        """How many characters of text like ``text`` fit the window (the token window turned into
        characters at ``text``'s own characters-per-token rate), a little under to be safe."""
        budget = min(self.chars, self.max_chars)
        if self.tokens and text:
            tokens = max(count_tokens(text, self.tokenizer), 1)
            budget = min(budget, int(self.tokens * len(text) / tokens * 0.95))
        return max(budget, 1)


@dataclass(frozen=True)
class Fit:
    """One prompt measured against one window."""

    window: Window
    chars: int
    tokens: int

    @property
    def over_max(self) -> bool:
        return self.chars > self.window.max_chars

    @property
    def over_window(self) -> bool:
        w = self.window
        return self.chars > min(w.chars, w.max_chars) or bool(w.tokens and self.tokens > w.tokens)

    @property
    def share(self) -> float:
        """How much of the window the prompt fills (1.0 = exactly; over 1 = past it)."""
        shares = [self.chars / max(self.window.chars, 1)]
        if self.window.tokens:
            shares.append(self.tokens / self.window.tokens)
        return max(shares)

    def describe(self) -> str:
        w = self.window
        text = f"{self.chars:,}/{w.chars:,} characters"
        if w.tokens:
            text += f", ~{self.tokens:,}/{w.tokens:,} {w.tokenizer} tokens"
        return text
