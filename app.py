"""Darkroom's Streamlit entry point: a router over the pages in pages/ and the shared singletons.

Run with ``streamlit run app.py``. Every decision that is not layout lives in ``pipeline/``.
The settings, the database engine and the background runner are one per server process
(``st.cache_resource``), shared by every browser session; pages find them in
``st.session_state`` and never import this script.

This file has two roles. ``streamlit run app.py`` finds the ``st.App`` named ``app`` at the
bottom (Streamlit's documented ASGI entry point) and imports this file once, as the module
``app``, to build the web server: every HTTP response gets the security headers below, and at
startup every URL is routed through this file. Each browser session then runs it as
``__main__``: the router. (``AppTest.from_file("app.py")`` runs only the router.)

Start-up (issue 17): the server's import of this file imports only Streamlit, so the server
answers as soon as Streamlit can; Darkroom's own modules and the database check are loaded by
a warm-up thread meanwhile, while the browser loads Streamlit's JavaScript, and the first script
run waits for that thread rather than import the same modules beside it. What the first page does
not need (numpy, Pillow, textstat: the offline stack's) is loaded a moment after it is drawn.
"""

from __future__ import annotations

import base64
import gc
import hashlib
import importlib
import inspect
import logging
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import streamlit as st

if TYPE_CHECKING:
    from pipeline.access import Role
    from pipeline.config import Settings
    from pipeline.runs.background import BackgroundRunner

PAGES = Path(__file__).parent / "pages"
WARM_UP = "darkroom-warm-up"
# What the router and the first page (Runs) import: loaded on a thread while the browser loads
# Streamlit's JavaScript, instead of before the server answers (about 0.7 s on 2 cores).
WARM_UP_MODULES = (
    "pipeline.access", "pipeline.config", "pipeline.envfile", "pipeline.errors", "pipeline.files", "pipeline.registry",
    "pipeline.review.events", "pipeline.runs.background", "pipeline.runs.records", "pipeline.store.db", "pipeline.runs.control",
    "pipeline.runs.retention", "pipeline.runs.projects", "pages.components", "pages.components.confirm",
    "pages.components.project_filter",
    "streamlit.emojis",  # Streamlit's emoji table (a large module), read to check the page icon below
)
LATER = "darkroom-later-imports"
# pipeline.RUN_MODULES are not needed to draw the first page, so not loaded before it (pipeline/ imports
# them where they are used), but wanted by a run's first image and by a prompt set's check: loaded once, a
# moment after the first page is drawn, so a launch does not wait for them either.
LATER_DELAY_S = 3.0  # after the first page and its own follow-up runs (e.g. the reviewer's cookie, a browser round trip)


# ---- the web server (built once, when `streamlit run app.py` imports this module) ---------------------------
def _inline_script_hashes() -> str:
    """CSP hashes of the inline scripts in Streamlit's own index.html (one, in 1.67), so they may run."""
    index = Path(st.__file__).parent / "static" / "index.html"
    scripts = re.findall(r"<script>(.*?)</script>", index.read_text(encoding="utf-8"), re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)


def security_headers() -> dict[str, str]:
    """The headers every response carries.

    Nothing is loaded from another host: a markdown image or link in user text (rendered as text
    anyway) cannot make a reviewer's browser call out. Styles inline because Streamlit's CSS-in-JS
    writes <style> tags; blob: scripts are how Streamlit loads a v2 component's inline JavaScript
    (pages/components), made by scripts already running here; data:/blob: images are Streamlit's own.
    """
    policy = "; ".join([
        "default-src 'self'",
        f"script-src 'self' blob: {_inline_script_hashes()}".strip(),
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "media-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'self'",
    ])
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "SAMEORIGIN",  # for browsers that ignore frame-ancestors: no framing by other sites
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


class SecurityHeaders:
    """ASGI middleware: :func:`security_headers` on every HTTP response (WebSocket frames untouched)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = security_headers()  # once per server, not on every script run

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                from starlette.datastructures import MutableHeaders

                headers = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


@asynccontextmanager
async def route_every_url_through_app(_app: Any) -> AsyncIterator[None]:
    """Before the first visit: no ``pages/`` auto-discovery, so ``/gallery?item=1`` works as a first visit.

    Streamlit serves a ``pages/`` folder itself (its first multipage mechanism) until some session
    has run ``st.navigation``; a bookmark opened right after a restart then ran ``pages/gallery.py``
    without this router, and failed on ``st.session_state["settings"]``. ``st.navigation`` sets
    this same class flag; setting it at startup makes every first visit go through ``run()``.
    """
    from streamlit.runtime.pages_manager import PagesManager

    PagesManager.uses_pages_directory = False
    start_warm_up()  # under `uvicorn app:app`; `streamlit run` started it when it imported this file
    yield


def start_warm_up() -> None:
    if not any(t.name == WARM_UP for t in threading.enumerate()):
        threading.Thread(target=warm_up, name=WARM_UP, daemon=True).start()


def warm_up() -> None:
    """At server start, off the request path: import what the first script run needs, and bring
    the database up to date (created and migrated on a first start), so the first visit finds both
    done. Anything that fails here is left for the script run, which reports it to the user.

    Meanwhile the server thread keeps serving Streamlit's JavaScript to the browser: a short GIL
    switch interval lets it in within half a millisecond instead of 5 ms per hand-over.

    The cyclic garbage collector is paused while the modules load, and what is loaded by then is
    frozen (``gc.freeze``: left out of every later collection). Classes, functions and tables live
    as long as the process; collecting over and over while ~400 modules load scanned them again
    each time, about a fifth of the warm-up's CPU (0.2 s of 1.1 s on this machine). Reference
    counting still frees everything as before; only a cycle that was garbage at the freeze (about
    150 small objects) is never reclaimed.
    """
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    collecting = gc.isenabled()
    gc.disable()
    try:
        try:
            for module in WARM_UP_MODULES:
                importlib.import_module(module)
        finally:
            gc.freeze()
            if collecting:
                gc.enable()
        from pipeline.config import Settings
        from pipeline.envfile import load_env_file
        from pipeline.store.db import open_database

        load_env_file()
        open_database(Settings.from_env()).dispose()
        # The first element a process draws makes Streamlit ask whether it runs in a REPL
        # (inspect.stack()), which looks up the file of every loaded module (~1,200) once and
        # caches it: done here, while the browser loads, rather than on the first visit.
        inspect.getmodule(inspect.currentframe())
    except Exception:  # noqa: BLE001 (the first visit meets the same problem and shows it)
        logging.getLogger("darkroom.app").debug("warm-up stopped early", exc_info=True)
    finally:
        sys.setswitchinterval(switch)


def later_imports() -> None:
    """Load :data:`pipeline.RUN_MODULES` (on their own thread, see :func:`start_later_imports`)."""
    from pipeline import load_run_modules

    time.sleep(LATER_DELAY_S)
    load_run_modules(ahead_only=True)


@st.cache_resource(show_spinner=False)
def start_later_imports() -> threading.Thread:
    """Once per server process, when its first page has been drawn."""
    thread = threading.Thread(target=later_imports, name=LATER, daemon=True)
    thread.start()
    return thread


def wait_for_warm_up(timeout: float = 30.0) -> None:
    """Let the warm-up finish before this script imports the same modules (two threads importing
    one package at once can deadlock on Python's module locks)."""
    for thread in threading.enumerate():
        if thread.name == WARM_UP and thread is not threading.current_thread():
            thread.join(timeout)


@st.cache_resource
def get_settings() -> Settings:
    load_env_file()  # .env in the working directory, beside .streamlit/secrets.toml: never over a variable already set
    settings = Settings.from_env()
    registry.ensure_loaded(settings.plugin_modules())
    return settings


@st.cache_resource
def get_engine():  # type: ignore[no-untyped-def]
    return open_database(get_settings())


@st.cache_resource(on_release=lambda runner: runner.stop())
def get_runner() -> BackgroundRunner:
    runner = BackgroundRunner(get_engine(), get_settings())
    runner.start()
    return runner


def keep_reviewer() -> None:
    name = st.session_state["reviewer_input"]
    try:
        st.session_state["reviewer"] = validate_reviewer(name) if name.strip() else ""
    except InputError as e:
        st.session_state["reviewer_problem"] = str(e)
        return
    st.session_state["reviewer_cleared"] = not st.session_state["reviewer"]


def sign_in_configured() -> bool:
    """Whether ``.streamlit/secrets.toml`` has an ``[auth]`` table (Streamlit's st.login, OIDC)."""
    if not st.secrets.load_if_toml_exists():
        return False
    return "auth" in st.secrets


def signed_in_name() -> str:
    """The signed-in user's name or email where sign-in (st.login) is configured, else ''."""
    if st.user.get("is_logged_in") is True:
        return str(st.user.get("name") or st.user.get("email") or "").strip()
    return ""


def sign_in_gate() -> Role:
    """The session's role. With sign-in configured, a visitor who is not signed in sees only the
    sign-in button (and the page stops there); a signed-in one gets the role ``[access]`` gives
    their e-mail. Without sign-in, the one user of this machine may do everything."""
    if not sign_in_configured():
        return Role.admin
    if st.user.get("is_logged_in") is not True:
        st.title("Darkroom")
        st.write("Sign in to review, run and export.")
        st.button("Sign in", icon=":material/login:", on_click=st.login, type="primary")
        st.stop()
    role = role_for(access_config(st.session_state["settings"]), str(st.user.get("email") or ""))
    st.sidebar.text(f"Signed in as {signed_in_name()} ({role.name})")
    st.sidebar.button("Sign out", icon=":material/logout:", on_click=st.logout)
    return role


def reviewer_box() -> None:
    """The reviewer's name: the signed-in user, or asked once and kept in a cookie of this browser.

    Pages read ``st.session_state["reviewer"]``, a plain key: Streamlit drops a widget's own
    state when the page changes, so the widget is re-seeded from it on every run. A new session
    (reload, new tab, pasted link) starts from the cookie, so the name is not asked again; a
    browser that refuses the cookie is told so, instead of losing the name at the next reload.
    """
    from pages.components import cookie_reviewer, remember_reviewer

    if name := signed_in_name():  # the signed-in identity, never a typed name
        st.session_state["reviewer"] = name
        return
    if "reviewer" not in st.session_state:
        st.session_state["reviewer"] = cookie_reviewer()
    st.session_state["reviewer_input"] = st.session_state["reviewer"]
    st.sidebar.text_input("Your name (reviewer)", key="reviewer_input", placeholder="e.g. Ana", on_change=keep_reviewer,
                          help="Saved with every rating and decision you make, and remembered by this browser.")
    if problem := st.session_state.pop("reviewer_problem", None):
        st.sidebar.error("That name cannot be used:")
        st.sidebar.text(problem)
    name = st.session_state["reviewer"]
    with st.sidebar:
        kept = remember_reviewer(name, forget=bool(st.session_state.get("reviewer_cleared")))
    if not name:
        st.sidebar.caption("Enter your name to rate and approve images.")
    elif kept is not None and kept != name:
        st.sidebar.warning("This browser did not keep your name (are cookies blocked?): it will be asked again after a reload "
                           "or in a new tab.")


def run_end_notice() -> None:
    """Notices (e.g. "Run 3 completed") on whatever page is open; polls only while a run is active.

    Shares ``runs_seen_status`` with the Runs page, so a run's end is announced once.
    """
    for message in st.session_state.pop("toasts", []):
        st.toast(message, icon=":material/notifications:")
    with session(st.session_state["engine"]) as s:
        runs = run_summaries(s, limit=20)
    seen = st.session_state.setdefault("runs_seen_status", {})
    for r in runs:
        seen.setdefault(r.id, r.status)
    if not any(r.active for r in runs):
        return

    @st.fragment(run_every=2.0)
    def watch() -> None:
        with session(st.session_state["engine"]) as s:
            now = run_summaries(s, limit=20)
        seen = st.session_state.setdefault("runs_seen_status", {})
        for r in now:
            if seen.get(r.id) in ACTIVE_RUN_STATUSES and not r.active:
                st.session_state.setdefault("toasts", []).append(
                    f"Run {r.id} {r.outcome}: {r.completed} completed, {r.failed} failed, {r.blocked} blocked")
            seen[r.id] = r.status
        if st.session_state.get("toasts") or not any(r.active for r in now):
            st.rerun(scope="app")  # shows the notice, refreshes the page, and stops this timer once nothing runs

    watch()


def storage_problem(e: Exception) -> None:
    """A data folder or database Darkroom cannot use (damaged, read-only, full): the message, as text."""
    known = storage_error(e) if isinstance(e, OSError) else e
    st.error("Darkroom cannot use its data folder or database. What is wrong, and what to do:",
             icon=":material/error:")
    st.code(str(known or e), language=None, wrap_lines=True)


def run() -> None:
    # An emoji icon is drawn in the page (an inline SVG); a :material/...: one would be fetched from Google's servers.
    st.set_page_config(page_title="Darkroom", page_icon="📷", layout="wide")
    st.session_state["settings"] = get_settings()
    try:
        st.session_state["engine"] = get_engine()
        st.session_state["runner"] = get_runner()
    except (StorageError, OSError) as e:  # checked again on the next visit: fixing it needs no restart
        storage_problem(e)
        st.stop()
    role = st.session_state["role"] = sign_in_gate()

    def home() -> None:
        """The root ("/") opens Runs at its own address: the default page has none, so "/runs" would not exist."""
        st.switch_page(PAGES / "runs.py")

    home_page = st.Page(home, title="Darkroom", default=True, visibility="hidden")
    page = st.navigation([
        home_page,
        st.Page(PAGES / "new_run.py", title="New run", icon=":material/add_circle:"),
        st.Page(PAGES / "runs.py", title="Runs", icon=":material/list:"),
        st.Page(PAGES / "gallery.py", title="Gallery", icon=":material/photo_library:"),
        st.Page(PAGES / "review.py", title="Review", icon=":material/rate_review:", url_path="review", visibility="hidden"),
        st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
        st.Page(PAGES / "providers.py", title="Providers", icon=":material/monitoring:"),
        st.Page(PAGES / "projects.py", title="Projects", icon=":material/folder_special:"),
        st.Page(PAGES / "storage.py", title="Storage", icon=":material/storage:"),
        *([st.Page(PAGES / "settings.py", title="Settings", icon=":material/settings:")] if allowed(role, "settings") else []),
    ])
    if page is home_page:  # a first visit to "/": straight on to Runs, without drawing the sidebar for nothing
        home()
    reviewer_box()
    run_end_notice()
    try:
        page.run()
    except StorageError as e:  # e.g. the database turned out damaged, or the disk filled, mid-page
        storage_problem(e)
    finally:  # also after st.stop() (e.g. Runs with no runs yet)
        start_later_imports()


if __name__ == "__main__":  # a browser session (and AppTest)
    # The router's imports live here, not at the top: the server's own import of this file (below)
    # then costs only Streamlit's, and the warm-up thread has loaded these by the first visit.
    wait_for_warm_up()
    from pipeline import registry
    from pipeline.access import Role, access_config, allowed, role_for
    from pipeline.config import Settings
    from pipeline.envfile import load_env_file
    from pipeline.errors import InputError, StorageError
    from pipeline.files import storage_error
    from pipeline.review.events import validate_reviewer
    from pipeline.runs.background import BackgroundRunner
    from pipeline.runs.records import ACTIVE_RUN_STATUSES, run_summaries
    from pipeline.store.db import open_database, session

    run()
else:  # imported by `streamlit run app.py` (or `uvicorn app:app`) to build the server
    from starlette.middleware import Middleware

    if "streamlit" in Path(sys.argv[0]).parts or Path(sys.argv[0]).name == "streamlit":  # `streamlit run app.py`: start the
        start_warm_up()  # warm-up now, beside Streamlit's own server start, not after it (a plain `import app` starts nothing)
    app = st.App(__file__, middleware=[Middleware(SecurityHeaders)], lifespan=route_every_url_through_app)
