"""Every reviewer action as an event row: who, what, when, before → after. Undo and history read it.

:func:`act` applies one action of one reviewer to one or many images as one *batch*: for each
image whose value changes it appends a ``review_event`` row and updates that reviewer's own
``rating`` row (the current state the grid queries), in the caller's transaction. Only the
acting reviewer's row is ever written, so nothing one reviewer does (a bulk approve included)
can change another's stars, decision or note.

:func:`undo_last` reverses this reviewer's most recent batch not yet undone (a single star or
a bulk approve of 1,000 images alike) by appending ``undo`` events; pressing it again goes one
batch further back. The caller commits.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import exists
from sqlmodel import Session, col, select

from pipeline.errors import InputError
from pipeline.store.models import Iteration, Rating, ReviewEvent, utcnow
from pipeline.store.statements import insert_or_ignore

REVIEWER_MAX_CHARS = 64  # the [review] reviewer_max_chars default
ACTIONS = ("star", "clear_stars", "approve", "reject", "clear_decision", "note")
FIELD_OF = {"star": "stars", "clear_stars": "stars", "approve": "decision", "reject": "decision", "clear_decision": "decision",
            "note": "note"}
NOTE_MAX_CHARS = 4000  # the [review] note_max_chars default; callers pass the configured value
_CHUNK = 500  # ids per IN (...) list: far below any database's parameter limit


@dataclass(frozen=True)
class Outcome:
    batch_id: str
    action: str
    changed: int  # images whose value changed (an image already in that state writes no event)
    iteration_ids: tuple[int, ...]  # the images the action was asked for


def validate_reviewer(name: str, max_chars: int = REVIEWER_MAX_CHARS) -> str:
    """A reviewer's name as stored: trimmed, NFC; empty, overlong or control characters are refused."""
    if not isinstance(name, str):
        raise InputError("reviewer: give a name so ratings can be told apart")
    cleaned = unicodedata.normalize("NFC", name.strip())
    if not cleaned:
        raise InputError("reviewer: give a name so ratings can be told apart")
    if len(cleaned) > max_chars:
        raise InputError(f"reviewer: {len(cleaned)} characters is over the limit of {max_chars}")
    bad = next((c for c in cleaned if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp")), None)
    if bad is not None:
        raise InputError(f"reviewer: the name contains a control character (U+{ord(bad):04X}); use letters, digits and spaces")
    return cleaned


def _target(action: str, value: int | str | None, note_max_chars: int) -> tuple[str, Any]:
    """The rating field an action sets and its new value, validated."""
    if action not in ACTIONS:
        raise InputError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
    if action == "star":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
            raise InputError(f"stars: {value!r} is not a whole number from 1 to 5")
        return "stars", value
    if action == "note":
        text = "" if value is None else str(value)
        if len(text) > note_max_chars:
            raise InputError(f"note: {len(text):,} characters is over the limit of {note_max_chars:,}")
        return "note", text
    if value is not None:
        raise InputError(f"{action} takes no value (got {value!r})")
    return FIELD_OF[action], {"clear_stars": None, "approve": "approved", "reject": "rejected", "clear_decision": "none"}[action]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _value(field: str, text: str | None) -> Any:
    if field == "stars":
        return None if text is None else int(text)
    return text if text is not None else ("none" if field == "decision" else "")


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _mine(reviewer: str, ids: Sequence[int]) -> Any:
    """This reviewer's rows, read afresh (a long-lived session must not hand back a stale copy as `before`)."""
    return (select(Rating).where(Rating.reviewer == reviewer, col(Rating.iteration_id).in_(ids))
            .execution_options(populate_existing=True))


def _own_rows(s: Session, reviewer: str, ids: Sequence[int]) -> dict[int, Rating]:
    """This reviewer's rating row for each image, created where missing (race-free: insert or ignore)."""
    found: dict[int, Rating] = {}
    for part in _chunks(ids):
        found.update({r.iteration_id: r for r in s.exec(_mine(reviewer, part))})
    missing = [i for i in ids if i not in found]
    if missing:
        now = utcnow()
        rows = [{"iteration_id": i, "reviewer": reviewer, "stars": None, "decision": "none", "note": "", "rated_at": now,
                 "decided_at": None} for i in missing]
        table = Rating.__table__  # type: ignore[attr-defined]
        insert = insert_or_ignore(s.get_bind().dialect.name, table, index_elements=["iteration_id", "reviewer"])
        if insert is not None:  # one prepared statement, executemany
            s.connection().execute(insert, rows)
        else:  # another database: plain inserts (a concurrent twin tab may then fail and be retried by the user)
            s.connection().execute(table.insert(), rows)
        for part in _chunks(missing):
            found.update({r.iteration_id: r for r in s.exec(_mine(reviewer, part))})
    return found


def _check_images(s: Session, ids: Sequence[int]) -> None:
    known: set[int | None] = set()
    for part in _chunks(ids):
        known.update(s.exec(select(Iteration.id).where(col(Iteration.id).in_(part))).all())
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise InputError(f"image{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown[:5]))}"
                         f"{' …' if len(unknown) > 5 else ''} do{'es' if len(unknown) == 1 else ''} not exist")


def _set(row: Rating, field: str, value: Any, now: datetime, decided_at: datetime | None = None) -> None:
    setattr(row, field, value)
    row.rated_at = now
    if field == "decision":
        row.decided_at = None if value == "none" else (decided_at or now)


def _append(s: Session, events: list[dict[str, Any]], batch_size: int) -> None:
    """Write the rating rows changed and the batch's events (one executemany; no per-row ORM objects)."""
    s.flush()
    if events:
        s.connection().execute(ReviewEvent.__table__.insert(), [{**e, "batch_size": batch_size} for e in events])  # type: ignore[attr-defined]


def act(s: Session, reviewer: str, iteration_ids: Sequence[int], action: str, value: int | str | None = None, *,
        scope: str = "", note_max_chars: int = NOTE_MAX_CHARS) -> Outcome:
    """Apply one action of ``reviewer`` to the images as one batch (one undo reverses it)."""
    return act_many(s, reviewer, iteration_ids, [(action, value)], scope=scope, note_max_chars=note_max_chars)


def act_many(s: Session, reviewer: str, iteration_ids: Sequence[int], actions: Sequence[tuple[str, int | str | None]], *,
             scope: str = "", note_max_chars: int = NOTE_MAX_CHARS) -> Outcome:
    """Several actions (e.g. stars and a decision) on the same images as one batch."""
    reviewer = validate_reviewer(reviewer)
    targets = [(action, *_target(action, value, note_max_chars)) for action, value in actions]
    if len({field for _, field, _ in targets}) != len(targets):
        raise InputError("one batch sets each of stars, decision and note at most once")
    ids = list(dict.fromkeys(int(i) for i in iteration_ids))
    if not ids:
        raise InputError("choose at least one image")
    _check_images(s, ids)
    rows = _own_rows(s, reviewer, ids)
    batch, now = uuid.uuid4().hex, utcnow()
    events: list[dict[str, Any]] = []
    for iteration_id in ids:
        row = rows[iteration_id]
        for action, field, after in targets:
            before = getattr(row, field)
            if before == after:
                continue
            events.append({"iteration_id": iteration_id, "reviewer": reviewer, "action": action, "field": field,
                           "before": _text(before), "after": _text(after),
                           "before_at": row.decided_at if field == "decision" else None, "batch_id": batch,
                           "scope": scope[:500], "undoes": "", "at": now})
            _set(row, field, after, now)
    changed = len({e["iteration_id"] for e in events})
    _append(s, events, changed)
    return Outcome(batch, targets[0][0] if len(targets) == 1 else "+".join(a for a, _, _ in targets), changed, tuple(ids))


@dataclass(frozen=True)
class UndoInfo:
    batch_id: str
    action: str
    count: int
    at: datetime
    scope: str

    @property
    def label(self) -> str:
        """``approve of 42 images``, ``star (3) on 1 image``."""
        return f"{self.action.replace('_', ' ')} of {self.count:,} image{'' if self.count == 1 else 's'}"


def last_undoable(s: Session, reviewer: str) -> UndoInfo | None:
    """What an undo would reverse now: this reviewer's newest batch that no undo names yet."""
    reviewer = reviewer.strip()
    later = ReviewEvent.__table__.alias("u")  # type: ignore[attr-defined]
    undone = exists().where(later.c.undoes == ReviewEvent.batch_id)
    e = s.exec(
        select(ReviewEvent).where(ReviewEvent.reviewer == reviewer, ReviewEvent.action != "undo", ~undone)
        .order_by(col(ReviewEvent.id).desc()).limit(1)
    ).first()
    if e is None:
        return None
    return UndoInfo(e.batch_id, e.action, e.batch_size, e.at, e.scope)


def undo_last(s: Session, reviewer: str) -> Outcome | None:
    """Reverse this reviewer's last batch (None when there is nothing left to undo)."""
    reviewer = validate_reviewer(reviewer)
    info = last_undoable(s, reviewer)
    if info is None:
        return None
    events = list(s.exec(select(ReviewEvent).where(ReviewEvent.batch_id == info.batch_id).order_by(col(ReviewEvent.id).desc())))
    ids = list(dict.fromkeys(e.iteration_id for e in events))
    rows = _own_rows(s, reviewer, ids)
    batch, now = uuid.uuid4().hex, utcnow()
    undo_events: list[dict[str, Any]] = []
    for e in events:  # newest first, so an image touched twice in a batch ends at its first `before`
        row = rows[e.iteration_id]
        undo_events.append({"iteration_id": e.iteration_id, "reviewer": reviewer, "action": "undo", "field": e.field,
                            "before": _text(getattr(row, e.field)), "after": e.before,
                            "before_at": row.decided_at if e.field == "decision" else None, "batch_id": batch,
                            "scope": f"undo {info.label}"[:500], "undoes": info.batch_id, "at": now})
        _set(row, e.field, _value(e.field, e.before), now, decided_at=e.before_at)
    _append(s, undo_events, len(ids))
    return Outcome(batch, "undo", len(ids), tuple(ids))


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    reviewer: str
    action: str
    field: str  # stars | decision | note
    before: str | None
    after: str | None
    batch_id: str
    batch_size: int
    undo: bool

    @property
    def text(self) -> str:
        """``ana · approve · none → approved`` (a bulk action says how many images it covered)."""
        def show(v: str | None) -> str:
            if self.field == "stars":
                return "no stars" if v is None else f"{v}★"
            if self.field == "note":
                return f"“{(v or '')[:60]}{'…' if v and len(v) > 60 else ''}”" if v else "no note"
            return v or "none"
        bulk = f" (bulk, {self.batch_size:,} images)" if self.batch_size > 1 else ""
        what = f"undo {self.field}" if self.undo else self.action.replace("_", " ")
        return f"{self.reviewer} · {what}{bulk} · {show(self.before)} → {show(self.after)}"


def history(s: Session, iteration_id: int, limit: int = 200) -> list[HistoryEntry]:
    """What happened to one image, newest first."""
    rows = s.exec(select(ReviewEvent).where(ReviewEvent.iteration_id == iteration_id)
                  .order_by(col(ReviewEvent.id).desc()).limit(max(1, limit)))
    return [HistoryEntry(e.at, e.reviewer, e.action, e.field, e.before, e.after, e.batch_id, e.batch_size, e.action == "undo")
            for e in rows]

