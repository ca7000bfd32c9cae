"""Projects: runs grouped by campaign or client, their defaults and spending cap, pruning and deleting."""

import streamlit as st

from pages.components.confirm import ask_first
from pages.components.project_filter import project_filter
from pipeline import display
from pipeline.access import Role
from pipeline.errors import DarkroomError, InputError
from pipeline.runs import retention
from pipeline.runs.projects import create_project, list_projects, spent_by_project, update_project, write_project_file
from pipeline.services.catalog import configured_names
from pipeline.store.db import session
from pipeline.store.models import DEFAULT_PROJECT, row_id

settings, engine = st.session_state["settings"], st.session_state["engine"]
role = st.session_state.get("role", Role.admin)
admin = role >= Role.admin

st.title("Projects")
for message in st.session_state.pop("project_toasts", []):
    st.toast(message, icon=":material/notifications:")

with session(engine) as s:
    projects = list_projects(s)
    spent = {row_id(p): spent_by_project(s, row_id(p)) for p in projects}

st.dataframe(
    [{"project": p.name, "description": p.description, "spent": display.money(spent[row_id(p)]),
      "cap": display.money(p.budget_usd) if p.budget_usd else "none", "folder": str(settings.runs_dir / p.slug)
      if p.name != DEFAULT_PROJECT else str(settings.runs_dir)} for p in projects],
    hide_index=True, width="stretch",
)

names = [p.name for p in projects]
choice = project_filter(names, "projects_choice", blank="New project…")
current = next((p for p in projects if p.name == choice), None)
d = dict(current.defaults) if current else {}


def defaults_form(prefix: str) -> dict[str, object]:
    """The defaults a project gives its new runs (empty = Darkroom's own)."""
    providers = configured_names("providers")
    a, b = st.columns(2)
    chain = a.multiselect("Provider chain", providers, default=[n for n in d.get("providers", []) if n in providers],
                          key=f"{prefix}_providers")
    judges, refiners = ["", *configured_names("judges")], ["", *configured_names("refiners")]
    judge = b.selectbox("Judge", judges, index=judges.index(d["judge"]) if d.get("judge") in judges else 0,
                        format_func=lambda n: n or "(Darkroom's default)", key=f"{prefix}_judge")
    refiner = a.selectbox("Refiner", refiners, index=refiners.index(d["refiner"]) if d.get("refiner") in refiners else 0,
                          format_func=lambda n: n or "(Darkroom's default)", key=f"{prefix}_refiner")
    iterations = b.number_input("Iterations per prompt (0 = Darkroom's default)", 0, settings.run.max_iterations,
                                int(d.get("iterations") or 0), key=f"{prefix}_iterations")
    run_budget = a.number_input("Each run's budget in USD (0 = none)", 0.0, value=float(d.get("budget_usd") or 0.0), step=1.0,
                                key=f"{prefix}_run_budget")
    template = st.text_input("Prompt template (empty = the configured one)", value=str(d.get("template", "")), key=f"{prefix}_template",
                             help="Placeholders {title}, {prompt}, {scene}, {mood}; see the README")
    style = st.text_input("Style line added to every prompt", value=str(d.get("style", "")), key=f"{prefix}_style")
    values: dict[str, object] = {"providers": chain, "judge": judge, "refiner": refiner, "iterations": int(iterations) or None,
                                 "budget_usd": float(run_budget) or None, "template": template.strip(), "style": style.strip()}
    return values


if current is None:
    st.subheader("New project")
    name = st.text_input("Name", key="project_new_name")
    description = st.text_area("Description", key="project_new_description")
    cap = st.number_input("Spending cap across all its runs, USD (0 = none)", 0.0, step=10.0, key="project_new_cap")
    defaults = defaults_form("new")
    if st.button("Create project", type="primary", disabled=not name.strip()):
        try:
            with session(engine) as s:
                project = create_project(s, settings, name, description=description, defaults=defaults, budget_usd=float(cap) or None)
                s.commit()
            write_project_file(settings, project)
            st.session_state.setdefault("project_toasts", []).append(f"Project {project.name} created")
            st.query_params["project"] = project.name
            st.rerun()
        except InputError as e:
            st.error("The project was not created:")
            st.text(str(e))
    st.stop()

st.subheader("Settings")
st.text(f"Runs of this project: {settings.runs_dir / current.slug if current.name != DEFAULT_PROJECT else settings.runs_dir}")
description = st.text_area("Description", value=current.description, key=f"project_desc_{current.id}")
cap = st.number_input("Spending cap across all its runs, USD (0 = none)", 0.0, value=float(current.budget_usd or 0.0), step=10.0,
                      key=f"project_cap_{current.id}", help="Its runs pause before a call would take the project's spending past this.")
defaults = defaults_form(f"edit_{current.id}")
if st.button("Save", type="primary"):
    try:
        with session(engine) as s:
            update_project(s, settings, current.name, description=description, defaults=defaults, budget_usd=float(cap) or None)
            s.commit()
        st.session_state.setdefault("project_toasts", []).append(f"Project {current.name} saved")
        st.rerun()
    except InputError as e:
        st.error("Not saved:")
        st.text(str(e))

st.page_link("pages/runs.py", label="Its runs", icon=":material/list:", query_params={"project": current.name})
st.page_link("pages/storage.py", label="Its storage", icon=":material/storage:", query_params={"project": current.name})

st.subheader("Prune")
st.caption("Removes image files and their thumbnails; each image's record (prompt, score, cost) stays. Approved images, "
           "queued or running runs and unfinished prompts are never touched.")
a, b, c = st.columns(3)
older = a.number_input("Keep only approved images older than (days, 0 = off)", 0, 3650, 0, key="prune_days")
keep_best = b.toggle("Keep each prompt's best", key="prune_best")
drop_rejected = c.toggle("Drop rejected", key="prune_rejected")
policy = retention.PrunePolicy(older_than_days=float(older) or None, keep_best=keep_best, drop_rejected=drop_rejected,
                               project=current.name)
try:
    policy.check()
    with st.spinner("Counting…"):
        preview = retention.prune(engine, settings, policy, dry_run=True)
except InputError as e:
    preview = None
    st.caption(str(e.detail))
except DarkroomError as e:  # e.g. images kept in a bucket
    preview = None
    st.text(str(e))
if preview is not None:
    st.text(f"Would remove {len(preview.images):,} image(s): {display.size(preview.image_bytes)} on disk and "
            f"{display.size(preview.thumbnail_bytes)} of thumbnails in the database ({policy.describe()}).")
    if preview.images:
        st.dataframe([{"run": x.run_id, "prompt": x.prompt_key, "iteration": x.number, "size": display.size(x.image_bytes),
                       "why": x.why} for x in preview.images[:500]], hide_index=True, width="stretch")
        if st.button(f"Prune {len(preview.images):,} image(s)", type="primary", disabled=not admin):
            try:
                done = retention.prune(engine, settings, policy)
                st.session_state.setdefault("project_toasts", []).append(
                    f"Pruned {len(done.images):,} image(s), {display.size(done.image_bytes)} freed")
            except DarkroomError as e:
                st.session_state.setdefault("project_toasts", []).append(str(e))
            st.rerun()

if current.name != DEFAULT_PROJECT:
    st.subheader("Delete")

    asking = st.session_state.get("project_delete_asked") == current.name
    if st.button("Delete project…", icon=":material/delete:", disabled=not admin or asking,
                 help="Asks first, naming the runs, images and bytes" if admin else "Only an admin may delete projects"):
        st.session_state["project_delete_asked"] = current.name
        st.rerun()
    if asking:
        try:
            plan = retention.plan_project_delete(engine, settings, current.name)
        except DarkroomError as e:
            st.session_state.pop("project_delete_asked", None)
            st.text(str(e))
            st.stop()
        if ask_first("project_delete_asked", current.name, f"Project {current.name} and everything in it goes for good: "
                     f"{plan.describe()}.", f"Delete {current.name}"):
            try:
                retention.delete_project(engine, settings, current.name)
                st.session_state.setdefault("project_toasts", []).append(f"Project {current.name} deleted: {plan.describe()}")
            except DarkroomError as e:
                st.session_state.setdefault("project_toasts", []).append(str(e))
            st.query_params.pop("project", None)
            st.rerun()
