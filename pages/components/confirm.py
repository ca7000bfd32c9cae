"""A destructive action's confirmation, shown in the page (not a dialog: it survives any rerun)."""

from __future__ import annotations

import streamlit as st


def ask_first(key: str, subject: object, question: str, yes_label: str) -> bool:
    """While ``st.session_state[key] == subject`` (set by the page's first button), show ``question``
    with ``yes_label`` and **Keep it**. True once confirmed (the question is then closed)."""
    if st.session_state.get(key) != subject:
        return False
    with st.container(border=True):
        st.text(question)  # names user text (a project's name): never markdown
        yes, no = st.columns(2)
        if yes.button(yes_label, type="primary", icon=":material/delete_forever:"):
            st.session_state.pop(key, None)
            return True
        if no.button("Keep it"):
            st.session_state.pop(key, None)
            st.rerun()
    return False
