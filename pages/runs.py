"""Runs: every run with its status and counts, and one run's prompts (read-only for now)."""

import streamlit as st

from pipeline.db import session
from pipeline.registry import judges, providers, refiners
from pipeline.runs import item_states, list_runs, output_dir_of, recover_orphans


def component_label(registry, name: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return registry.get_class(name).display_name()
    except Exception:
        return f"{name} (not installed)"


st.title("Runs")
settings, engine = st.session_state["settings"], st.session_state["engine"]
with session(engine) as s:
    recover_orphans(s)
    s.commit()
    runs = list_runs(s)
    if not runs:
        st.info("No runs yet. Start one from a terminal: `python -m pipeline run data/samples/seed.json`")
        st.stop()
    st.dataframe(
        [{"run": r.id, "name": r.name, "status": r.status, "completed": r.completed, "failed": r.failed,
          "blocked": r.blocked, "total": r.total, "cost ($)": round(r.cost_usd, 4),
          "providers": ", ".join(r.config.get("providers", [])), "created": r.created_at} for r in runs],
        hide_index=True,
    )
    chosen = st.selectbox("Run", [r.id for r in runs], format_func=lambda i: f"Run {i}")
    run = next(r for r in runs if r.id == chosen)
    config = run.config
    st.caption(
        f"Provider: {', '.join(component_label(providers, p) for p in config.get('providers', []))} · "
        f"judge: {component_label(judges, config.get('judge', ''))} · refiner: {component_label(refiners, config.get('refiner', ''))} · "
        f"output: `{output_dir_of(settings, run)}`"
    )
    st.dataframe(
        [{"prompt": x.prompt_key, "title": x.title, "status": x.status, "iterations": x.iterations,
          "best": x.final_iteration, "score": x.best_score, "cost ($)": round(x.cost_usd, 4), "error": x.error}
         for x in item_states(s, run.id)],
        hide_index=True,
    )
