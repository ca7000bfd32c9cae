"""Providers: success, latency, outcomes and cost from the call log; how the judge agrees with reviewers."""

import streamlit as st

from pipeline.review import charts, stats
from pipeline.store.db import session

engine = st.session_state["engine"]

st.title("Providers")
with session(engine) as s:
    calls = stats.calls(s)
    costs = stats.cost_by_run(s)
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
