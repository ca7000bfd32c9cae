"""What the Gallery and Review pages share: the view in the URL, the reviewer, the ``[review]`` config.

The view (filter, sort, page, open prompt, focused iteration, compare pair) is never kept in
the session: every run decodes it from the query string, and every change writes it back, so
back/forward, reload and a pasted link show exactly the same thing.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pages.components import session_id
from pipeline.review.decisions import ReviewConfig, review_config
from pipeline.review.view import ViewState, decode, encode

PAGES = {name: Path(__file__).resolve().parents[1] / f"{name}.py" for name in ("gallery", "review")}

# The desk pages are dense: less empty space above the first row (the toolbar stays clear).
COMPACT_CSS = """<style>
[data-testid="stMainBlockContainer"] { padding-top: 3.4rem; padding-bottom: 2rem; padding-left: 1.5rem; padding-right: 1.5rem; }
[data-testid="stMainBlockContainer"] h1 { font-size: 1.6rem; padding: 0; }
</style>"""


def config() -> ReviewConfig:
    return review_config(st.session_state["settings"])


def reviewer() -> str:
    return str(st.session_state.get("reviewer", "")).strip()


# Per session, plain dicts (not st.session_state, whose every access may stop a callback for a
# newer rerun): the view an action asked for until it is in the URL; the views this session put in
# the URL, per page, newest last; the page running; a page switch asked for by a callback.
_PENDING: dict[str, dict[str, str]] = {}
_RECENT: dict[tuple[str, str], list[dict[str, str]]] = {}
_PAGE: dict[str, str] = {}
_GOTO: dict[str, tuple[str, dict[str, str]]] = {}
_KEEP = 30


def _history_navigation() -> bool:
    from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx

    ctx = get_script_run_ctx(suppress_warning=True)
    return bool(ctx is not None and ctx.is_history_navigation)


def read_view() -> ViewState:
    """The view to show: the URL's, or the one the last action asked for if the URL does not show it yet.

    Keys typed ahead make the browser send reruns carrying the URL it had before the app's last
    answer; such a URL (one this session wrote before its newest) is not a navigation and must not
    undo the keys. Back/forward (history navigation), a link or a new tab is followed as is.
    """
    sid = session_id()
    params = _PENDING.get(sid)
    if params is None:
        incoming = st.query_params.to_dict()
        recent = _RECENT.get((sid, _PAGE.get(sid, "")), [])
        if not recent or incoming == recent[-1] or incoming not in recent[:-1] or _history_navigation():
            if recent and incoming != recent[-1]:
                _remember(incoming)
            return decode(incoming, config())
        params = recent[-1]
    write_params(params)
    return decode(params, config())


def _remember(params: dict[str, str]) -> None:
    sid = session_id()
    recent = _RECENT.setdefault((sid, _PAGE.get(sid, "")), [])
    if params in recent:
        recent.remove(params)
    recent.append(params)
    del recent[:-_KEEP]
    if len(_RECENT) > 20_000:  # sessions long gone
        _RECENT.clear()


def params_of(view: ViewState, cfg: ReviewConfig | None = None) -> dict[str, str]:
    return encode(view, cfg or config())


def write_params(params: dict[str, str]) -> None:
    sid = session_id()
    _PENDING[sid] = params
    _remember(params)
    if params != st.query_params.to_dict():
        st.query_params.from_dict(params)  # a new history entry: back/forward step through views
    _PENDING.pop(sid, None)


def stage_view(view: ViewState, cfg: ReviewConfig) -> None:
    """Remember the view an action asked for (no Streamlit call: safe right after a commit)."""
    _PENDING[session_id()] = encode(view, cfg)


def write_view(view: ViewState) -> None:
    """Put ``view`` in the URL, unless it is there already."""
    write_params(params_of(view))


def go(page: str, view: ViewState, cfg: ReviewConfig | None = None) -> None:
    """Switch to ``page`` ("gallery" or "review") showing ``view``; callable from a widget callback.

    Pass ``cfg`` when called between database writes and their commit (no Streamlit call then).
    """
    _GOTO[session_id()] = (page, params_of(view, cfg))


def follow(current: str) -> None:
    """At the top of a page: carry out a :func:`go` asked for by a callback (switch pages, or rewrite the URL)."""
    _PAGE[session_id()] = current
    pending = _GOTO.pop(session_id(), None)
    if not pending:
        _remember_current()
        return
    page, params = pending
    if page == current:
        write_params(params)
        return
    _PENDING.pop(session_id(), None)
    _PAGE[session_id()] = page
    _remember(params)
    st.switch_page(PAGES[page], query_params=params)


def _remember_current() -> None:
    """A page's first run (a link, a new tab, the menu): its URL is where this session's views start."""
    sid = session_id()
    if not _RECENT.get((sid, _PAGE.get(sid, ""))):
        _remember(st.query_params.to_dict())


def compact() -> None:
    st.html(COMPACT_CSS)
