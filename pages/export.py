"""Export: build a zip of chosen runs' images with a manifest, then download it."""

import streamlit as st

from pipeline import display
from pipeline.errors import ExportError
from pipeline.review.export import SELECTIONS, BuiltZip, ExportChoice, build_zip, export_path
from pipeline.runs.records import run_summaries
from pipeline.store.db import session

settings, engine = st.session_state["settings"], st.session_state["engine"]

st.title("Export")
with session(engine) as s:
    runs = run_summaries(s)
if not runs:
    st.info("Nothing to export yet: launch a run on the **New run** page, then review it in the **Gallery**.")
    st.stop()

names = {r.id: f"Run {r.id} · {r.name} · {r.status}" for r in runs}  # option labels are plain text
run_ids = st.multiselect("Runs", list(names), default=[runs[0].id], format_func=names.get, key="export_runs")
selection = st.radio("Images", list(SELECTIONS), format_func=SELECTIONS.get, key="export_selection", horizontal=True)
choice = ExportChoice.of(run_ids, selection)
st.caption("Images keep their original bytes, stored uncompressed, one folder per prompt id, with manifest.csv and "
           "manifest.json (prompt, final prompt, iteration, provider, model, seed, judge score, stars, decision, reviewer, note, "
           "cost, sha256).")

if st.button("Build zip", type="primary", icon=":material/folder_zip:", disabled=not run_ids):
    dest = export_path(settings, list(choice.run_ids), choice.selection)
    try:
        with session(engine) as s, st.spinner("Writing the zip…"):
            result = build_zip(s, settings, list(choice.run_ids), dest, selection=choice.selection)
        st.session_state["export_built"] = BuiltZip(choice, result.path, result.images, result.bytes_written)
    except ExportError as e:
        st.session_state.pop("export_built", None)
        st.warning("Nothing was exported:")
        st.text(str(e))

# The zip on offer is always the one built for the choice on screen: change the runs or the
# images and the previous zip is no longer offered until "Build zip" is pressed again.
built: BuiltZip | None = st.session_state.get("export_built")
if built is not None and built.offered_for(choice):
    path = built.path
    st.success(f"{built.images} image(s), {built.bytes_written / 1e6:,.1f} MB")
    st.text(f"Zip: {path}\nHolds {built.choice.describe({r.id: r.name for r in runs})}")

    def open_zip():  # type: ignore[no-untyped-def]
        return path.open("rb")  # read when the button is clicked, not on every redraw

    st.download_button("Download zip", data=open_zip, file_name=path.name, mime="application/zip", icon=":material/download:",
                       on_click="ignore", type="primary", key=f"download-{path.name}")
    st.caption(f"Cost of these runs so far: {display.money(sum(r.cost_usd for r in runs if r.id in choice.run_ids))}.")
elif built is not None:
    st.info("The runs or images chosen have changed since the last zip was built: press **Build zip** for this choice.")
