"""Progress on the command line: a one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from pipeline.runs.records import RunSummary

log = logging.getLogger("pipeline.runs.progress")


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def describe(p: RunSummary) -> str:
    extra = f", {p.failed} failed" if p.failed else ""
    extra += f", {p.blocked} blocked" if p.blocked else ""
    return (f"{p.done}/{p.total} prompts done ({p.completed} completed{extra}), {p.running} in progress, ${p.cost_usd:.4f}, "
            f"{_clock(p.elapsed_s or 0.0)}")


def bar_text(p: RunSummary, width: int) -> str:
    """█ completed, ▒ failed or blocked, ░ still to do: a run whose prompts all failed never shows a full solid bar."""
    if not p.total:
        return "░" * width
    ok = int(width * p.completed / p.total)
    bad = int(width * p.done / p.total) - ok
    return "█" * ok + "▒" * bad + "░" * (width - ok - bad)


class TerminalBar:
    """Redraws one line at most ten times a second."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 28) -> None:
        self.stream, self.width, self._last = stream, width, 0.0

    def __call__(self, p: RunSummary) -> None:
        now = time.monotonic()
        if now - self._last < 0.1 and p.done < p.total:
            return
        self._last = now
        bar = bar_text(p, self.width)
        self.stream.write(f"\r{bar} {describe(p)}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


class LogLines:
    """One log line per finished prompt (steps are logged by the runner itself)."""

    def __init__(self) -> None:
        self._done = -1

    def __call__(self, p: RunSummary) -> None:
        if p.done != self._done:
            self._done = p.done
            log.info(describe(p))

    def close(self) -> None:
        pass
