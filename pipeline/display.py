"""How things are worded on screen and in the terminal: durations, money, statuses, component names."""

from __future__ import annotations

from typing import Any

from pipeline import registry
from pipeline.components import Component
from pipeline.errors import ConfigError

# Streamlit markdown (Material icons and badges render with the app's own font: no emoji font needed).
STATUS_ICONS = {
    # runs
    "queued": ":gray[:material/schedule:]", "running": ":blue[:material/play_circle:]",
    "interrupted": ":orange[:material/pause_circle:]", "paused": ":orange[:material/savings:]", "cancelled": ":gray[:material/cancel:]",
    "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
    "partial": ":orange[:material/warning:]",  # completed, with failed or blocked prompts (RunSummary.outcome)
    # prompts and iterations
    "pending": ":gray[:material/schedule:]", "blocked": ":violet[:material/block:]", "ok": ":green[:material/check_circle:]",
}
DECISION_BADGES = {"approved": ":green-badge[approved]", "rejected": ":red-badge[rejected]", "none": ""}
ANSWER_ICONS = {"yes": ":green[:material/check_circle:]", "no": ":red[:material/cancel:]", "unsure": ":orange[:material/help:]"}
# Why a prompt stopped (RunItem.stop_reason), in plain words for the CLI, summary.json and the pages.
STOP_REASONS = {
    "target_reached": "reached the target score",
    "prompt_unchanged": "the refiner left the prompt unchanged, so another iteration would repeat the last",
    "iterations_done": "used all its iterations",
    "failed": "a step failed (see the error)",
    "blocked": "blocked by a content policy (see the error)",
    "budget": "waiting: the run's budget was reached; resume with a higher budget",
    "paused": "waiting: the run paused; resume it to continue",
    "cancelled": "waiting: the run was cancelled before this prompt finished",
    "interrupted": "waiting: the run was interrupted; resume it to continue",
}


def stop_reason(code: str) -> str:
    """Why a prompt stopped, in words ("" when not recorded: still running, or an older run)."""
    return STOP_REASONS.get(code, code)


def shown(text: str, limit: int = 80) -> str:
    """User text quoted back in a message: lone surrogates written as ``\\ud800``, and cut to ``limit``."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else f"{safe[:limit]}… ({len(text):,} characters)"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


def size(n_bytes: float | None) -> str:
    """Bytes as people read them: ``512 B``, ``40.7 kB``, ``1.5 MB``, ``2.3 GB`` (powers of 1000, as ``ls -h --si``)."""
    if n_bytes is None:
        return "–"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:,.0f} B"


def money(usd: float | None) -> str:
    if usd is None:
        return "–"
    return f"${usd:,.4f}" if usd < 1 else f"${usd:,.2f}"


def status(value: str) -> str:
    """A status as markdown with its icon (for tables, use the plain value)."""
    return f"{STATUS_ICONS.get(value, '')} {value}".strip()


def score_badge(score: float | None) -> str:
    if score is None:
        return ":gray-badge[not judged]"
    colour = "green" if score >= 7.5 else "orange" if score >= 5 else "red"
    return f":{colour}-badge[{score:.1f}]"


def stars(n: int | None) -> str:
    return "★" * n + "☆" * (5 - n) if n else ""


def component_label(kind: str, name: str) -> str:
    """``offline (offline: local renderer, no network)``; a name not installed says so."""
    try:
        cls: type[Component] = getattr(registry, kind).get_class(name)
        return cls.display_name()
    except ConfigError:
        return f"{name} (not installed)"


def routing_note(routing: dict[str, Any] | None) -> str:
    """How a step was served, when there is more to say than "first try on the first service"."""
    if not routing:
        return ""
    parts = []
    attempts = int(routing.get("attempts") or 1)
    if routing.get("served_by") and attempts > 1:
        parts.append(f"served by {routing['served_by']} on attempt {attempts}")
    skipped = routing.get("skipped") or []
    if skipped:
        parts.append("skipped " + "; ".join(f"{s.get('service')} ({s.get('reason')})" for s in skipped))
    for r in routing.get("rewrites") or []:
        parts.append(f"blocked by {r.get('blocked_by')}, rewritten by {r.get('refiner')} to comply: {r.get('rationale')}")
    versions = (routing.get("compressed") or {}).get("versions") or {}
    for provider, v in versions.items():  # the prompt was over this provider's window (pipeline/runs/prompt_steps.py)
        hit = "window hit" if v.get("window_hit") else "still over the window"
        parts.append(f"compressed for {provider} by {v.get('method')}: {v.get('chars_before', 0):,} → {v.get('chars_after', 0):,} "
                     f"characters (ratio {v.get('ratio')}), {v.get('elements_kept')}/{v.get('elements')} elements kept, {hit}")
    return " · ".join(parts)


def table_lines(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned text lines (the first row is the header), for the command line."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
