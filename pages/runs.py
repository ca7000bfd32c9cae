"""Runs: every run with live progress, one run's prompts, and Cancel / Resume."""

import streamlit as st

from pages.components.confirm import ask_first
from pages.components.project_filter import project_filter
from pipeline import display
from pipeline.access import Role, allowed, refusal
from pipeline.errors import DarkroomError
from pipeline.files import is_disk_full_pause
from pipeline.runs import control, retention
from pipeline.runs.projects import list_projects, run_ids_of
from pipeline.runs.records import ACTIVE_RUN_STATUSES, item_states, run_summaries
from pipeline.store.db import session

settings, engine, runner = st.session_state["settings"], st.session_state["engine"], st.session_state["runner"]
POLL_SECONDS = 1.5

st.title("Runs")
for message in st.session_state.pop("toasts", []):
    st.toast(message, icon=":material/notifications:")

summaries = control.summaries(engine)
with session(engine) as s:
    project_names = [p.name for p in list_projects(s)]
project = project_filter(project_names, "runs_project")
if project:
    with session(engine) as s:
        in_project = set(run_ids_of(s, project))
    summaries = [r for r in summaries if r.id in in_project]
if not summaries and project:
    st.info("No runs in this project yet. Start one on the **New run** page and pick it there.")
    st.stop()
if not summaries:
    st.info("No runs yet. Start one on the **New run** page (no keys needed: the offline stack works anywhere).")
    st.page_link("pages/new_run.py", label="New run", icon=":material/add_circle:")
    st.stop()

ids = [r.id for r in summaries]
if st.session_state.get("runs_selected") not in ids:
    st.session_state["runs_selected"] = ids[0]
selected = st.selectbox("Run", ids, key="runs_selected",
                        format_func=lambda i: next(f"Run {r.id} · {r.name}" for r in summaries if r.id == i))
chosen = next(r for r in summaries if r.id == selected)

# Controls for the chosen run (outside the polling fragment, so a tick never races a click).
role = st.session_state.get("role", Role.admin)
controls = st.columns([1, 2, 3])
if not allowed(role, "cancel"):
    st.caption(refusal(role, "cancel").replace("cancel runs", "cancel or resume runs"))
if chosen.status in ACTIVE_RUN_STATUSES:
    if controls[0].button("Cancel", icon=":material/stop:", disabled=not allowed(role, "cancel"),
                          help="Take no new prompts; calls in flight get a few seconds to finish, then are cancelled. Resumable."):
        status = runner.cancel(chosen.id)
        st.session_state.setdefault("toasts", []).append(f"Run {chosen.id}: cancel requested ({status})")
        st.rerun()
else:
    retry = chosen.failed + chosen.blocked > 0
    can_resume = chosen.status in ("interrupted", "paused", "cancelled", "failed") or (chosen.status == "completed" and retry)
    retry_failed = controls[1].checkbox("Retry failed and blocked", value=chosen.status == "completed", disabled=not retry)
    budget = chosen.config.get("budget_usd")
    new_budget = None
    paused_by_budget = chosen.status == "paused" and not is_disk_full_pause(chosen.error)  # a full disk needs space, not money
    if paused_by_budget or budget is not None:
        new_budget = controls[2].number_input(
            "Budget (USD)", min_value=0.01, step=1.0, format="%.2f", key=f"budget_{chosen.id}",
            value=float(max(budget or 0.0, chosen.cost_usd) * 2 or 1.0) if paused_by_budget else float(budget or 1.0),
            help="The run pauses before a call would take its spending past this.")
    if controls[0].button("Resume", icon=":material/play_arrow:", disabled=not can_resume or not allowed(role, "resume"),
                          help="Queue the run again: only unfinished steps are done."):
        try:
            control.resume(engine, settings, chosen.id, retry_failed=retry_failed, budget_usd=new_budget)
            runner.wake()
            st.session_state.setdefault("toasts", []).append(f"Run {chosen.id} queued again")
        except DarkroomError as e:
            st.session_state.setdefault("toasts", []).append(str(e))
        st.rerun()


asking = st.session_state.get("runs_delete_asked") == chosen.id
if chosen.status not in ACTIVE_RUN_STATUSES and controls[2].button(
        "Delete…", icon=":material/delete:", disabled=role < Role.admin or asking, key="runs_delete",
        help="Remove the run with its images, thumbnails, sidecars and exports (asks first)"
             if role >= Role.admin else "Only an admin may delete runs"):
    st.session_state["runs_delete_asked"] = chosen.id
    st.rerun()
if asking:
    try:
        plan = retention.plan_run_delete(engine, settings, chosen.id)
        question = (f"Run {chosen.id} and everything of it goes for good: {plan.describe()}. "
                    "Rows, images, thumbnails, sidecars and exports are removed together.")
    except DarkroomError as e:
        st.session_state.pop("runs_delete_asked", None)
        question = ""
        st.text(str(e))
    if question and ask_first("runs_delete_asked", chosen.id, question, f"Delete run {chosen.id}"):
        try:
            retention.delete_run(engine, settings, chosen.id)
            st.session_state.setdefault("toasts", []).append(f"Run {chosen.id} deleted: {plan.describe()}")
        except DarkroomError as e:
            st.session_state.setdefault("toasts", []).append(str(e))
        st.session_state.pop("runs_selected", None)
        st.rerun()


def run_row(r) -> None:  # type: ignore[no-untyped-def]
    with st.container(border=True):
        head, numbers = st.columns([3, 2])
        head.text(f"Run {r.id} · {r.name}")  # user text: never markdown
        head.markdown(f"{display.status(r.outcome)} · "
                      f"{', '.join(display.component_label('providers', p) for p in r.config.get('providers', []))}")
        numbers.markdown(f"{r.done}/{r.total} done · **{r.failed}** failed · **{r.blocked}** blocked  \n"
                         f"elapsed {display.duration(r.elapsed_s)} · cost {display.money(r.cost_usd)}")
        # The bar fills with completed prompts only: failed and blocked ones are counted beside it, never as done work.
        st.progress(r.fraction, text=f"{r.completed} completed of {r.total}" + (f" · {r.failed} failed" if r.failed else "")
                    + (f" · {r.blocked} blocked" if r.blocked else "") + (f" · {r.running} in progress" if r.running else ""))
        if r.outcome in ("failed", "blocked"):
            st.error("No prompt completed: every one failed or was blocked. The run's prompts below say why; "
                     "Resume with **Retry failed and blocked** tries them again.")
        if r.error:  # may quote a service's or a prompt's text: shown as text
            (st.warning if r.status == "paused" else st.error)("Paused:" if r.status == "paused" else "Stopped:")
            st.text(r.error)


@st.fragment(run_every=POLL_SECONDS if any(r.active for r in summaries) else None)
def live() -> None:
    """Redrawn on a timer while a run is queued or running; a full rerun stops the timer at the end."""
    with session(engine) as s:
        now = run_summaries(s)
        if project:
            now = [r for r in now if r.id in in_project]
        chosen_items = item_states(s, st.session_state["runs_selected"])
    seen = st.session_state.setdefault("runs_seen_status", {})
    finished = []
    for r in now:
        if seen.get(r.id) in ACTIVE_RUN_STATUSES and not r.active:
            finished.append(f"Run {r.id} {r.outcome}: {r.completed} completed, {r.failed} failed, {r.blocked} blocked")
        seen[r.id] = r.status
    for r in now[:10]:
        run_row(r)
    if len(now) > 10:
        with st.expander(f"{len(now) - 10} older run(s)"):
            st.dataframe([{"run": r.id, "name": r.name, "status": r.outcome, "done": r.done, "total": r.total,
                           "cost": display.money(r.cost_usd)} for r in now[10:]], hide_index=True)
    st.subheader(f"Prompts of run {st.session_state['runs_selected']}")
    st.dataframe(
        [{"prompt": x.prompt_key, "title": x.title, "status": x.status, "stopped": display.stop_reason(x.stop_reason), "iterations": x.iterations,
          "best": x.final_iteration, "score": x.best_score, "cost": display.money(x.cost_usd), "error": x.error}
         for x in chosen_items],
        hide_index=True, width="stretch",
        column_config={"score": st.column_config.NumberColumn(format="%.2f"), "error": st.column_config.TextColumn(width="large")},
    )
    if finished:
        st.session_state.setdefault("toasts", []).extend(finished)
        if not any(r.active for r in now):
            st.rerun()  # full rerun: shows the toasts and stops the timer
        for message in st.session_state.pop("toasts", []):
            st.toast(message, icon=":material/notifications:")


live()
