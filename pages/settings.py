"""Settings: which services are configured (never showing a key), and where things are kept."""

import streamlit as st
from sqlalchemy.engine import make_url

from pipeline.services.catalog import catalog, test_connection

settings = st.session_state["settings"]

st.title("Settings")
st.subheader("Services")
st.caption("Keys come from environment variables or `.streamlit/secrets.toml` (root-level keys; see "
           "`.streamlit/secrets.toml.example`). Only whether a key is present is shown, never its value.")
kinds = {"providers": "Image provider", "judges": "Judge", "refiners": "Refiner"}
st.dataframe(
    [{"kind": kinds[i.kind], "name": i.display_name, "state": "ready" if i.configured else "missing " + ", ".join(i.missing),
      "key": (f"{i.key_env_var}: {'present' if i.key_present else 'missing'}" if i.key_env_var else "none needed"),
      "base URL": (f"{i.base_url or '(default)'}  [{i.base_url_env_var}]" if i.base_url_env_var else "–")}
     for i in catalog()],
    hide_index=True, width="stretch",
)
st.subheader("Test connection")
st.caption("One cheap, unbilled request per service (a model lookup, a status or health check): does it answer, "
           "and does it accept the key?")
for info in [i for i in catalog() if not i.offline]:
    name_col, state_col, button_col = st.columns([3, 5, 2])
    name_col.markdown(f"**{info.display_name}** · {info.kind[:-1]}")
    key = f"probe-{info.kind}-{info.name}"
    if button_col.button("Test connection", key=key, disabled=not info.configured,
                         help=None if info.configured else f"Set {', '.join(info.missing)} first"):
        with st.spinner(f"Asking {info.name}…"):
            st.session_state[key + "-result"] = test_connection(info.kind, info.name, settings)
    result = st.session_state.get(key + "-result")
    if result is not None:  # the message may quote the service's reply: shown as text
        (state_col.success if result.ok else state_col.error)("Answered" if result.ok else "Failed")
        state_col.text(result.message)
    elif not info.configured:
        state_col.caption(f"not configured: {', '.join(info.missing)} missing")

st.subheader("Storage")
st.text(  # paths are whatever the environment says: text, not markdown
    f"Data folder: {settings.data_dir}  (DARKROOM_DATA_DIR)\n"
    f"Database: {make_url(settings.database_url).render_as_string(hide_password=True)}  (DARKROOM_DATABASE_URL)\n"
    f"Run outputs: {settings.runs_dir}\nExports: {settings.exports_dir}\nLogs: {settings.logs_dir}"
)
st.subheader("Defaults")
run = settings.run
st.text(
    f"Iterations {run.iterations} (at most {run.max_iterations}), {run.concurrency} prompts at once "
    f"(at most {run.max_concurrency})\n"
    f"Prompt template: {settings.prompt.template}"
)
st.caption("Model IDs and prices live in `pipeline/defaults.toml`; override them in `data/darkroom.toml` or the file named by "
           "`DARKROOM_CONFIG`.")
