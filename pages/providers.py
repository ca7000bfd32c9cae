"""Providers: success, latency, outcomes and cost from the call log; how the judge agrees with reviewers."""

from datetime import datetime, timezone

import streamlit as st

from pages.components.project_filter import project_filter
from pipeline import display, quotas
from pipeline.review import charts, stats
from pipeline.runs.projects import list_projects
from pipeline.store.db import session
from pipeline.store.models import row_id

engine, settings = st.session_state["engine"], st.session_state["settings"]

st.title("Providers")
with session(engine) as s:
    projects = {p.name: row_id(p) for p in list_projects(s)}
project = project_filter(list(projects), "providers_project")
project_id = projects.get(project) if project else None

# What the services said about their quotas (x-ratelimit-* headers, credits), newest reading per service.
readings = {r.service: r for r in quotas.load(settings.data_dir / quotas.QUOTAS_FILE)}
readings.update({r.service: r for r in quotas.board.readings()})  # this process's own, fresher
if readings:
    st.subheader("Quotas")
    rows = []
    for r in readings.values():
        for kind, a in r.allowances.items():
            rows.append({"service": r.service, "limit of": kind, "remaining": a.remaining, "of": a.limit,
                         "left": f"{a.share_left:.0%}" if a.share_left is not None else "–",
                         "resets in (as reported)": display.duration(a.reset_s) if a.reset_s is not None else "–",
                         "reported": datetime.fromtimestamp(r.at, timezone.utc)})
        if r.credits_used or r.cost_usd or r.balance is not None:
            rows.append({"service": r.service, "limit of": "credits", "remaining": r.balance, "of": None, "left": "–",
                         "resets in (as reported)": f"{r.credits_used:g} credits / {display.money(r.cost_usd)} used",
                         "reported": datetime.fromtimestamp(r.at, timezone.utc)})
    st.dataframe(rows, hide_index=True, width="stretch",
                 column_config={"reported": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss")})
    st.caption("Calls to a service slow down once less than [resilience.limits] quota_reserve of an allowance is left, "
               "and wait for the reset at zero, before the service would refuse them.")

with session(engine) as s:
    calls = stats.calls(s, project_id=project_id)
    costs = stats.cost_by_run(s, project_id=project_id)
    scored = stats.scores(s)
    starred = stats.stars_against_scores(s)
    breakers = stats.breaker_states(s)
    breaker_log = stats.breaker_events(s)
if not calls:
    st.info("No calls logged yet. Charts of success rate, latency, outcomes and cost appear here once a run has started.")
    st.stop()

ok = sum(c.outcome == "ok" for c in calls)
a, b, c, d = st.columns(4)
a.metric("Calls logged", f"{len(calls):,}")
b.metric("Succeeded", f"{ok / len(calls):.1%}")
c.metric("Spent", f"${sum(x.cost_usd for x in calls):,.4f}")
d.metric("Runs", len(costs))

st.subheader("Circuit breakers")
if breakers:
    st.dataframe(
        [{"service": b.service, "state": b.state.replace("_", "-"), "since": b.since,
          "why": b.reason, "changes": b.transitions} for b in breakers],
        hide_index=True, width="stretch",
        column_config={"since": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm:ss"), "why": st.column_config.TextColumn(width="large")},
    )
    opened = [b.service for b in breakers if b.state != "closed"]
    if opened:
        st.warning(f"Not taking work right now: {', '.join(opened)} (a probe call is let through after the cool-down).")
    with st.expander(f"Breaker log ({len(breaker_log)} most recent)"):
        st.dataframe([{"at": e.at, "service": e.service, "state": e.state, "run": e.run_id, "why": e.reason} for e in breaker_log],
                     hide_index=True, width="stretch")
else:
    st.caption("Every breaker is closed: no service has failed often enough to be skipped "
               "(opens after 5 failures in a row by default; see the README).")

left, right = st.columns(2)
left.plotly_chart(charts.success_rate(calls), width="stretch")
right.plotly_chart(charts.latency(calls), width="stretch")
left.plotly_chart(charts.outcomes(calls), width="stretch")
right.plotly_chart(charts.cost(costs), width="stretch")
if scored:
    left.plotly_chart(charts.score_distribution(scored), width="stretch")
with right:
    if starred:
        st.plotly_chart(charts.stars_vs_score(starred), width="stretch")
        rho = stats.spearman([x for x, _, _ in starred], [float(y) for _, y, _ in starred])
        st.caption(f"Rank agreement (Spearman ρ) between judge and reviewers: {rho:.2f} over {len(starred)} rating(s)"
                   if rho is not None else "Too few starred images to measure agreement yet (at least 3 with different values).")
    else:
        st.info("Star some images in the Gallery to see how well the judge agrees with the reviewers.")
