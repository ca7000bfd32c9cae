"""Darkroom's Streamlit entry point: a router over the pages in pages/ and the shared singletons.

Run with ``streamlit run app.py``. Every decision that is not layout lives in ``pipeline/``.
"""

from pathlib import Path

import streamlit as st

from pipeline.config import Settings
from pipeline.db import open_database

PAGES = Path(__file__).parent / "pages"


@st.cache_resource
def get_settings() -> Settings:
    return Settings.from_env()


@st.cache_resource
def get_engine():  # type: ignore[no-untyped-def]
    return open_database(get_settings())


def run() -> None:
    st.set_page_config(page_title="Darkroom", page_icon=":material/photo_camera:", layout="wide")
    # Pages read the process-wide singletons from here rather than importing this script.
    st.session_state["settings"] = get_settings()
    st.session_state["engine"] = get_engine()
    page = st.navigation([st.Page(PAGES / "runs.py", title="Runs", icon=":material/list:", default=True)])
    page.run()


run()
