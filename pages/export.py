"""Export: build a zip of chosen runs' images with a manifest, then download it."""

import streamlit as st

from pages.components.project_filter import project_filter
from pipeline import display
from pipeline.errors import ExportError
from pipeline.review.bucket_export import export_to_bucket
from pipeline.review.export import SELECTIONS, BuiltZip, ExportChoice, build_zip, export_path
from pipeline.runs.projects import list_projects, run_ids_of
from pipeline.runs.records import run_summaries
from pipeline.store.db import session

settings, engine = st.session_state["settings"], st.session_state["engine"]

st.title("Export")
with session(engine) as s:
    runs = run_summaries(s)
if not runs:
    st.info("Nothing to export yet: launch a run on the **New run** page, then review it in the **Gallery**.")
    st.stop()

with session(engine) as s:
    project_names = [p.name for p in list_projects(s)]
project = project_filter(project_names, "export_project")
whole_project = False
if project:
    with session(engine) as s:
        in_project = run_ids_of(s, project)
        runs = run_summaries(s, run_ids=in_project) if in_project else []
    if not runs:
        st.info("This project has no runs yet.")
        st.stop()
    whole_project = st.toggle("The whole project: every one of its runs", value=True, key="export_whole_project",
                              help="All its approved images (or the choice below), whatever run they came from")
names = {r.id: f"Run {r.id} · {r.name} · {r.status}" for r in runs}  # option labels are plain text
if whole_project:
    run_ids = [r.id for r in runs]
    st.text(f"{len(run_ids)} run(s) of {project}")
else:
    run_ids = st.multiselect("Runs", list(names), default=[runs[0].id], format_func=names.get, key="export_runs")
selection = st.radio("Images", list(SELECTIONS), format_func=SELECTIONS.get, key="export_selection", horizontal=True)
choice = ExportChoice.of(run_ids, selection)
st.caption("Images keep their original bytes, stored uncompressed, one folder per prompt id, with manifest.csv and "
           "manifest.json (prompt, final prompt, iteration, provider, model, seed, judge score, stars, decision, reviewer, note, "
           "cost, sha256).")

TARGETS = {"zip": "Zip file", "s3": "S3 prefix"}
target = st.radio("Export to", list(TARGETS), format_func=TARGETS.get, key="export_target", horizontal=True,
                  help="A zip to download, or the same files uploaded to a bucket (S3-compatible; endpoint, region and keys "
                       "from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
if target == "s3":
    url = st.text_input("S3 prefix", key="export_s3_url", placeholder="s3://bucket/deliveries/2026-11")
    if st.button("Upload to the bucket", type="primary", icon=":material/cloud_upload:", disabled=not (run_ids and url.strip())):
        try:
            with session(engine) as s, st.spinner("Uploading the images and the manifest…"):
                sent = export_to_bucket(s, settings, list(choice.run_ids), url.strip(), selection=choice.selection)
            st.success(f"{sent.images} image(s), {sent.bytes_sent / 1e6:,.1f} MB uploaded")
            st.text(f"To: {sent.url}/ (manifest.json written last)\nHolds {choice.describe({r.id: r.name for r in runs})}")
        except ExportError as e:
            st.warning("The export did not complete:")
            st.text(str(e))
    st.stop()

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
