"""Storage: images, bytes on disk and in the database, and growth per day, per project, run and provider; the doctor."""

import streamlit as st

from pages.components.project_filter import project_filter
from pipeline import display
from pipeline.access import Role
from pipeline.errors import DarkroomError
from pipeline.runs import doctor
from pipeline.runs.projects import list_projects
from pipeline.runs.usage import GROWTH_DAYS, Usage, storage_report
from pipeline.store.db import session

settings, engine = st.session_state["settings"], st.session_state["engine"]
admin = st.session_state.get("role", Role.admin) >= Role.admin

st.title("Storage")
with session(engine) as s:
    names = [p.name for p in list_projects(s)]
project = project_filter(names, "storage_project")

with st.spinner("Measuring…"):
    report = storage_report(engine, settings, project=project or None)
t = report.total
a, b, c, d = st.columns(4)
a.metric("Images", f"{t.images:,}")
b.metric("On disk", display.size(t.disk_bytes))
c.metric("Database file", display.size(report.database_bytes), help="The whole SQLite file and its write-ahead log")
d.metric("Growth per day", display.size(t.bytes_per_day), help=f"Image and thumbnail bytes made per day, last {GROWTH_DAYS} days")


def table(rows: list[Usage], label: str) -> None:
    st.dataframe([{label: u.name, "images": u.images, "on disk": display.size(u.disk_bytes), "in the database": display.size(u.db_bytes),
                   "per day": display.size(u.bytes_per_day), "bytes on disk": u.disk_bytes} for u in rows],
                 hide_index=True, width="stretch")


if not report.runs:
    st.info("No runs here yet.")
else:
    st.subheader("Per project")
    table(report.projects, "project")
    st.subheader("Per run")
    table(report.runs, "run")
    if report.providers:
        st.subheader("Per provider")
        table(report.providers, "provider")
    st.caption("In the database: each image's thumbnail exactly, plus the rest of the file shared out by iterations. "
               "Prune or delete on the **Projects** page; `python -m pipeline du` prints the same figures.")

st.subheader("Check: do the database and the disk agree?")
hashes = st.toggle("Also re-read every image to check its SHA-256 (slower)", key="storage_hashes")
if st.button("Check now", icon=":material/health_and_safety:"):
    try:
        with st.spinner("Checking…"):
            st.session_state["storage_findings"] = doctor.examine(engine, settings, hashes=hashes)
    except DarkroomError as e:  # e.g. images kept in a bucket
        st.text(str(e))
findings = st.session_state.get("storage_findings")
if findings is not None:
    if not findings:
        place = "in the bucket" if settings.storage_url else "on disk"
        st.success(f"Clean: every image a row names is {place}, no file is unknown, no temporary file is left.")
    else:
        st.warning(f"{len(findings)} problem(s):")
        st.dataframe([{"kind": f.kind, "where": f.path, "what": f.detail, "repairable": f.repairable} for f in findings],
                     hide_index=True, width="stretch")
        if st.button("Repair what can be repaired", disabled=not admin,
                     help="Finishes interrupted deletes and prunes, removes temporary files, moves unknown files to data/orphans/, "
                          "and makes rows forget missing images" if admin else "Only an admin may repair"):
            try:
                done = doctor.repair(engine, settings, findings)
                st.session_state["storage_findings"] = doctor.examine(engine, settings, hashes=hashes)
            except DarkroomError as e:  # e.g. the bucket refused a move or a delete: nothing is lost, say what
                st.text(str(e))
            else:
                st.session_state["storage_repaired"] = done
                st.rerun()
for line in st.session_state.pop("storage_repaired", []):
    st.text(f"repaired: {line}")
