"""Export: build a zip of chosen runs' images with a manifest, then download it."""

from pathlib import Path

import streamlit as st

from pipeline import display
from pipeline.errors import ExportError
from pipeline.review.export import SELECTIONS, build_zip, export_path
from pipeline.runs.records import run_summaries
from pipeline.store.db import session

settings, engine = st.session_state["settings"], st.session_state["engine"]

st.title("Export")
with session(engine) as s:
    runs = run_summaries(s)
if not runs:
    st.info("Nothing to export yet: launch a run on the **New run** page, then review it in the **Gallery**.")
    st.stop()

names = {r.id: f"Run {r.id} · {r.name} · {r.status}" for r in runs}
run_ids = st.multiselect("Runs", list(names), default=[runs[0].id], format_func=names.get, key="export_runs")
selection = st.radio("Images", list(SELECTIONS), format_func=SELECTIONS.get, key="export_selection", horizontal=True)
st.caption("Images keep their original bytes, stored uncompressed, one folder per prompt id, with manifest.csv and "
           "manifest.json (prompt, final prompt, iteration, provider, model, seed, judge score, stars, decision, reviewer, note, "
           "cost, sha256).")

if st.button("Build zip", type="primary", icon=":material/folder_zip:", disabled=not run_ids):
    dest = export_path(settings, run_ids, selection)
    try:
        with session(engine) as s, st.spinner("Writing the zip…"):
            result = build_zip(s, settings, run_ids, dest, selection=selection)
        st.session_state["export_built"] = {"path": str(result.path), "images": result.images, "bytes": result.bytes_written}
    except ExportError as e:
        st.session_state.pop("export_built", None)
        st.warning(str(e))

built = st.session_state.get("export_built")
if built and Path(built["path"]).is_file():
    path = Path(built["path"])
    st.success(f"{built['images']} image(s), {built['bytes'] / 1e6:,.1f} MB: `{path}`")

    def open_zip():  # type: ignore[no-untyped-def]
        return path.open("rb")  # read when the button is clicked, not on every redraw

    st.download_button("Download zip", data=open_zip, file_name=path.name, mime="application/zip", icon=":material/download:",
                       on_click="ignore", type="primary")
    st.caption(f"Built from {', '.join(names.get(i, f'run {i}') for i in run_ids)}; cost so far "
               f"{display.money(sum(r.cost_usd for r in runs if r.id in run_ids))}.")
