"""Darkroom's own components: the review desk, the culling grid and the reviewer cookie.

Built with Streamlit's custom-component API v2 (``st.components.v2.component``) from the plain
JavaScript and CSS files beside this module, passed inline: no build step, no npm, nothing
fetched at run time. v2 rather than a published component because the desk needs one global,
capture-phase key listener that sees keys before Streamlit's own hotkeys, full-screen overlays
(loupe, compare) drawn without a server round trip, and a bidirectional state for the action
queue; v2 gives all three with ~600 lines of tested code (``tests/test_review_browser.py``).

Keys reach Python through an *action queue*: each key appends ``{"a": ..., "seq": n}`` to the
component's ``actions`` state. Python applies the actions newer than the last one it saw and
hands that number back (``ack``), so keys typed faster than the app answers are all applied, in
order (a trigger value would keep only the newest while a run is busy). Batches are applied under
a per-session lock (:func:`exclusive`): Streamlit's fast reruns overlap an older run with a newer one.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import streamlit as st

from pipeline.errors import InputError
from pipeline.review.events import validate_reviewer

HERE = Path(__file__).parent
COOKIE = "darkroom_reviewer"
COOKIE_MAX_AGE = 400 * 24 * 3600  # the longest browsers keep a cookie

Actions = list[dict[str, Any]]


def _read(*names: str) -> str:
    return "\n".join((HERE / name).read_text(encoding="utf-8") for name in names)


_CSS = _read("desk.css")
_review = st.components.v2.component("darkroom_review_desk", js=_read("common.js", "zoom.js", "review.js"), css=_CSS)
_grid = st.components.v2.component("darkroom_card_grid", js=_read("common.js", "grid.js"), css=_CSS)
_identity = st.components.v2.component("darkroom_identity", js=_read("identity.js"))


# Which actions each session has applied, per component: a plain dict, not st.session_state, because
# reading or writing session state is a point where Streamlit may stop a callback for a newer rerun.
# Marking actions applied right after the database commit, with no such point in between, means an
# interrupted run neither loses keys (they are applied on the next run) nor applies them twice.
_APPLIED: dict[tuple[str, str], int] = {}
_SESSION_KEY = "_darkroom_session"
_MAX_SESSIONS = 10_000


def session_id() -> str:
    """This browser session's own key for the module-level bookkeeping; touches no widget state.

    A token kept in the session's state (AppTest gives every test session the same session id),
    read from the plain state object, which is no stopping point.
    """
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    if ctx is None:
        return ""
    raw = object.__getattribute__(ctx.session_state, "_state")
    try:
        return str(raw[_SESSION_KEY])
    except KeyError:
        token = f"{ctx.session_id}:{uuid.uuid4().hex}"
        raw[_SESSION_KEY] = token
        return token


def acked(key: str) -> int:
    """The sequence number of the last action of component ``key`` applied in this session."""
    return _APPLIED.get((session_id(), key), 0)


def new_actions(key: str) -> Actions:
    """The actions of component ``key`` not yet applied, oldest first (:func:`applied` marks them)."""
    state = st.session_state.get(key) or {}
    items = state.get("actions") if hasattr(state, "get") else None
    done = acked(key)
    return sorted((a for a in items or [] if isinstance(a, dict) and isinstance(a.get("seq"), int) and a["seq"] > done),
                  key=lambda a: a["seq"])


def applied(key: str, actions: Actions, sid: str) -> None:
    """Mark ``actions`` applied (call it right after committing them; no Streamlit call in between)."""
    if len(_APPLIED) > _MAX_SESSIONS:
        _APPLIED.clear()  # sessions long gone; a live one at worst re-sends actions it already has applied
    if actions:
        _APPLIED[(sid, key)] = max(_APPLIED.get((sid, key), 0), max(a["seq"] for a in actions))


Handler = Callable[[Actions, Callable[[], None]], None]


# One lock per session around applying actions. Streamlit's fast reruns (``runner.fastReruns``, on
# by default) start a newer run in a new thread while the older one is still running until its next
# Streamlit call, e.g. in the middle of its database work: without the lock both see the same actions
# as new (applied twice), and the older one, finishing last, puts its stale view back in the URL
# (a "next" lost, the following keys applied to the wrong prompt).
_LOCKS: dict[str, threading.RLock] = {}
_LOCK_USERS: dict[str, int] = {}  # runs holding or waiting for each session's lock
_LOCKS_GUARD = threading.Lock()
LOCK_WAIT_S = 15.0  # the older run releases the lock at its next Streamlit call, well before this


def _forget_idle_locks() -> None:
    """Drop the locks no run holds or waits for (sessions long gone, mostly); one in use stays,
    so the run holding it and the run waiting for it still share one lock."""
    for sid in [sid for sid, users in _LOCK_USERS.items() if users == 0]:
        del _LOCKS[sid], _LOCK_USERS[sid]


@contextlib.contextmanager
def exclusive() -> Iterator[bool]:
    """Hold this session's action lock (re-entrant); yields False if it could not be had in time."""
    sid = session_id()
    with _LOCKS_GUARD:
        if len(_LOCKS) > _MAX_SESSIONS:
            _forget_idle_locks()
        lock = _LOCKS.setdefault(sid, threading.RLock())
        _LOCK_USERS[sid] = _LOCK_USERS.get(sid, 0) + 1
    try:
        got = lock.acquire(timeout=LOCK_WAIT_S)
        try:
            yield got
        finally:
            if got:
                lock.release()
    finally:
        with _LOCKS_GUARD:
            _LOCK_USERS[sid] -= 1


def apply_pending(key: str, handle: Handler) -> None:
    """Hand the actions of component ``key`` not yet applied to ``handle``.

    Runs as the component's change callback, and again at the top of the page: Streamlit may stop
    a callback for a newer rerun after it has recorded the new state, and the next run then sees
    no change to call back for; the page's own call applies what was left. Under the session's
    lock, so an older run still applying a batch finishes (or stops) before the newer one reads
    which actions are new and which view they apply to.
    """
    with exclusive() as got:
        if not got:
            return  # still pending: the browser re-sends, and the next run applies them
        actions, sid = new_actions(key), session_id()
        if actions:
            handle(actions, lambda: applied(key, actions, sid))


def _on_actions(key: str, handle: Handler) -> Callable[[], None]:
    return lambda: apply_pending(key, handle)


def review_desk(data: dict[str, Any], *, key: str, on_actions: Handler) -> None:
    """The open prompt's iterations side by side, with the keys, loupe, compare and details.

    ``on_actions(actions, done)`` runs before the page (as a widget callback) with the new actions,
    e.g. ``[{"a": "stars", "v": 5, "seq": 7}, {"a": "next", "seq": 8}]``; it calls ``done()`` as
    soon as they are committed.
    """
    _review(key=key, data={**data, "key": key, "ack": acked(key)}, on_actions_change=_on_actions(key, on_actions),
            width="stretch", height="content")


def card_grid(data: dict[str, Any], *, key: str, on_actions: Handler) -> list[int]:
    """The culling grid; returns the iteration ids of the selected cards."""
    _grid(key=key, data={**data, "key": key, "ack": acked(key)}, on_actions_change=_on_actions(key, on_actions),
          on_selected_change=lambda: None, width="stretch", height="content")
    return selected(key)


def selected(key: str) -> list[int]:
    """The iteration ids selected in grid ``key`` (as last reported by the browser)."""
    state = st.session_state.get(key) or {}
    ids = state.get("selected") if hasattr(state, "get") else None
    return [i for i in ids or [] if isinstance(i, int)]


def cookie_reviewer() -> str:
    """The reviewer name kept in this browser's cookie ('' when none, or when it is not a usable name)."""
    raw = st.context.cookies.get(COOKIE)
    if not isinstance(raw, str) or not raw:
        return ""
    try:
        return validate_reviewer(unquote(raw))
    except InputError:
        return ""


def remember_reviewer(name: str, *, forget: bool = False, key: str = "darkroom_identity") -> str | None:
    """Store ``name`` in the browser's cookie (``forget``: remove it); returns what the browser kept (None until it answers)."""
    state = st.session_state.get(key) or {}
    kept = state.get("kept") if hasattr(state, "get") else None
    if kept is None and name and cookie_reviewer() == name:
        kept = name  # this session came with that cookie: known kept, so the browser need not report it (a rerun)
    _identity(key=key, data={"name": name, "forget": forget and not name, "cookie": COOKIE, "max_age": COOKIE_MAX_AGE,
                             "reported": kept}, on_kept_change=lambda: None, width="stretch", height="content")
    return kept


def media_url(source: bytes | Path, mime: str, slot: str) -> str | None:
    """A URL the browser can load ``source`` from (Streamlit's media store, kept while this page shows it).

    Files are served by content hash, so the browser caches them across reruns and prompts.
    """
    from streamlit import runtime

    if not runtime.exists():
        return None
    data = source if isinstance(source, bytes) else str(source)
    return runtime.get_instance().media_file_mgr.add(data, mime, f"darkroom.{slot}")


def apply_exclusively(apply: Callable[[], None]) -> None:
    """Run ``apply`` under the session's lock, so an older run still applying a batch goes first
    (fast reruns overlap runs of one session); if the lock is not had in time, say so."""
    with exclusive() as got:
        if got:
            apply()
        else:
            st.toast("Still saving your previous action: press the key again in a moment.")
