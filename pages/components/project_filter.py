"""The project picker the Runs, Export, Providers, Storage and Projects pages share: its value lives in the URL.

``?project=NAME`` is read on every run (a link, a reload or back/forward shows the same project)
and a choice writes it back; a name that is not a project reads as "none chosen".
"""

from __future__ import annotations

import streamlit as st


def project_filter(names: list[str], key: str, *, blank: str = "All projects") -> str:
    """The chosen project's name, or "" for ``blank``."""
    wanted = st.query_params.get("project", "")
    st.session_state[key] = wanted if wanted in names else ""  # the URL wins over what the widget held before

    def changed() -> None:
        value = st.session_state.get(key) or ""
        if value:
            st.query_params["project"] = value
        else:
            st.query_params.pop("project", None)

    return str(st.selectbox("Project", ["", *names], key=key, format_func=lambda n: n or blank, on_change=changed) or "")
