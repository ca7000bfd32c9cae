"""How things are worded on screen and in the terminal: durations, money, statuses, component names."""

from __future__ import annotations

from pipeline import registry

# Streamlit markdown (Material icons and badges render with the app's own font: no emoji font needed).
STATUS_ICONS = {
    # runs
    "queued": ":gray[:material/schedule:]", "running": ":blue[:material/play_circle:]",
    "interrupted": ":orange[:material/pause_circle:]", "paused": ":orange[:material/savings:]", "cancelled": ":gray[:material/cancel:]",
    "completed": ":green[:material/check_circle:]", "failed": ":red[:material/error:]",
    # prompts and iterations
    "pending": ":gray[:material/schedule:]", "blocked": ":violet[:material/block:]", "ok": ":green[:material/check_circle:]",
}
DECISION_BADGES = {"approved": ":green-badge[approved]", "rejected": ":red-badge[rejected]", "none": ""}
ANSWER_ICONS = {"yes": ":green[:material/check_circle:]", "no": ":red[:material/cancel:]", "unsure": ":orange[:material/help:]"}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s" if m else f"{s}s"


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
        return getattr(registry, kind).get_class(name).display_name()
    except registry.ConfigError:
        return f"{name} (not installed)"


def routing_note(routing: dict | None) -> str:
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
    return " · ".join(parts)
