"""Darkroom's Streamlit entry point: a router over the pages in pages/ and the shared singletons.

Run with ``streamlit run app.py``. Every decision that is not layout lives in ``pipeline/``.
The settings, the database engine and the background runner are one per server process
(``st.cache_resource``), shared by every browser session; pages find them in
``st.session_state`` and never import this script.
"""

from pathlib import Path

import streamlit as st

from pipeline import registry
from pipeline.config import Settings
from pipeline.runs.background import BackgroundRunner
from pipeline.store.db import open_database

PAGES = Path(__file__).parent / "pages"


@st.cache_resource
def get_settings() -> Settings:
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
    st.session_state["reviewer"] = st.session_state["reviewer_input"].strip()


def reviewer_box() -> None:
    """The reviewer's name, asked once in the sidebar and kept for the session.

    Pages read ``st.session_state["reviewer"]``, a plain key: Streamlit drops a widget's own
    state when the page changes, so the widget is re-seeded from it on every run.
    """
    st.session_state.setdefault("reviewer", "")
    st.session_state["reviewer_input"] = st.session_state["reviewer"]
    st.sidebar.text_input("Your name (reviewer)", key="reviewer_input", placeholder="e.g. Ana", on_change=keep_reviewer,
                          help="Saved with every rating and decision you make.")
    if not st.session_state["reviewer"]:
        st.sidebar.caption("Enter your name to rate and approve images.")


def run() -> None:
    st.set_page_config(page_title="Darkroom", page_icon=":material/photo_camera:", layout="wide")
    st.session_state["settings"] = get_settings()
    st.session_state["engine"] = get_engine()
    st.session_state["runner"] = get_runner()
    page = st.navigation([
        st.Page(PAGES / "new_run.py", title="New run", icon=":material/add_circle:"),
        st.Page(PAGES / "runs.py", title="Runs", icon=":material/list:", default=True),
        st.Page(PAGES / "gallery.py", title="Gallery", icon=":material/photo_library:"),
        st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
        st.Page(PAGES / "providers.py", title="Providers", icon=":material/monitoring:"),
        st.Page(PAGES / "settings.py", title="Settings", icon=":material/settings:"),
    ])
    reviewer_box()
    page.run()


run()
