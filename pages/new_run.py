"""New run: upload (or pick) a prompt set, check it, choose the services, see the cost, launch."""

import streamlit as st

from pipeline import display
from pipeline.errors import DarkroomError, InputError, PromptSetInvalid
from pipeline.prompts.promptset import Limits, compose_prompt, parse_bytes
from pipeline.runs import control
from pipeline.runs.estimate import estimate_run
from pipeline.runs.records import RunConfig
from pipeline.services.catalog import configured_names

settings, engine, runner = st.session_state["settings"], st.session_state["engine"], st.session_state["runner"]
run_defaults = settings.run
template = settings.prompt.template

st.title("New run")
source = st.segmented_control("Prompt set from", ["Upload", "Samples"], default="Upload", key="new_run_source")
raw: bytes | None = None
name = ""
if source == "Samples":
    samples = sorted(settings.samples_dir.glob("*.json"))
    sample = st.selectbox("Sample prompt set", samples, format_func=lambda p: p.name)
    if sample is not None:
        raw, name = sample.read_bytes(), sample.name
else:
    upload = st.file_uploader("Prompt set (JSON)", type=["json"],
                              help="A JSON list of prompts with id, title, scene, mood and prompt (see the README).")
    if upload is not None:
        raw, name = upload.getvalue(), upload.name
if raw is None:
    st.info("Upload a prompt set, or pick one of the samples, to see its prompts and launch a run.")
    st.stop()

try:
    spec = parse_bytes(raw, Limits.from_settings(settings), source=name)
except PromptSetInvalid as e:
    st.error(f"The prompt set has {len(e.problems)} problem(s). Fix them and upload the file again; nothing was saved.")
    st.text(f"File: {name}")
    st.dataframe([{"where (JSON path)": p.path or "(whole file)", "problem": p.message} for p in e.problems],
                 hide_index=True, width="stretch")
    st.stop()

st.subheader(f"{len(spec.prompts)} prompt(s)")
st.text(f"Prompt set: {spec.name}")
st.dataframe(
    [{"id": p.id, "title": p.title, "scene": p.scene, "mood": p.mood, "prompt": p.prompt,
      "sent to the provider": compose_prompt(p, template), "tags": ", ".join(p.tags)}
     for p in spec.prompts],
    hide_index=True, width="stretch", height=min(420, 38 + 35 * len(spec.prompts)),
)

st.subheader("Services and loop")
provider_names = configured_names("providers")
judge_names, refiner_names = configured_names("judges"), configured_names("refiners")
left, right = st.columns(2)
with left:
    chain = st.multiselect(
        "Provider chain (in order)", provider_names, default=[n for n in ["offline"] if n in provider_names],
        format_func=lambda n: display.component_label("providers", n),
        help="In fallback routing the first provider generates, and the next ones take over when it fails for good "
             "(breaker open, key refused, model gone, retries used up). Only configured services are offered (see Settings).",
    )
    judge = st.selectbox("Judge", judge_names, index=judge_names.index("offline") if "offline" in judge_names else 0,
                         format_func=lambda n: display.component_label("judges", n))
    refiner = st.selectbox("Refiner", refiner_names, index=refiner_names.index("offline") if "offline" in refiner_names else 0,
                           format_func=lambda n: display.component_label("refiners", n))
with right:
    iterations = st.slider("Iterations per prompt", 1, run_defaults.max_iterations, run_defaults.iterations)
    stop_early = st.toggle("Stop a prompt early at a target score")
    target = st.slider("Target judge score", 0.0, 10.0, 8.0, 0.5, disabled=not stop_early)
    concurrency = st.number_input("Prompts at once", 1, run_defaults.max_concurrency,
                                  run_defaults.concurrency)
    run_name = st.text_input("Run name", value=spec.name)

with st.expander("Fallbacks, routing and budget"):
    a, b = st.columns(2)
    judge_fallbacks = a.multiselect("Fallback judges (in order)", [n for n in judge_names if n != judge],
                                    format_func=lambda n: display.component_label("judges", n))
    refiner_fallbacks = b.multiselect("Fallback refiners (in order)", [n for n in refiner_names if n != refiner],
                                      format_func=lambda n: display.component_label("refiners", n))
    routing = a.radio("Routing", ["fallback", "pool"], horizontal=True, index=0 if run_defaults.routing == "fallback" else 1,
                      help="fallback: the chain in order. pool: spread generations over the healthy providers by recent "
                           "latency and calls in flight.")
    block_rewrites = b.number_input("Rewrites after a content block", 0, 3, run_defaults.block_rewrites,
                                    help="The refiner may rewrite a blocked prompt to comply this many times; then it ends blocked.")
    capped = a.toggle("Cap the spending")
    budget = b.number_input("Budget (USD)", min_value=0.01, value=5.0, step=1.0, format="%.2f", disabled=not capped,
                            help="The run pauses (resumable) before a call would take it past this.")

config = RunConfig(providers=chain, judge=judge or "", refiner=refiner or "", iterations=iterations,
                   target_score=target if stop_early else None, concurrency=int(concurrency),
                   judge_fallbacks=judge_fallbacks, refiner_fallbacks=refiner_fallbacks, routing=routing,
                   block_rewrites=int(block_rewrites), budget_usd=float(budget) if capped else None)
# The widget each setting comes from, to name it in a message (the CLI names its option instead).
LABELS = {"providers": "Provider chain", "judge": "Judge and fallback judges", "refiner": "Refiner and fallback refiners",
          "iterations": "Iterations per prompt", "concurrency": "Prompts at once", "target_score": "Target judge score",
          "routing": "Routing", "block_rewrites": "Rewrites after a content block", "budget": "Budget (USD)"}
problem = ""
try:
    config.validate(settings)
except InputError as e:
    problem = e.worded(LABELS.get(e.field, e.field))  # shown with st.text below

if not problem:
    estimate = estimate_run(settings, config, spec.prompts)
    a, b, c = st.columns(3)
    a.metric("Calls (at most)", f"{estimate.calls:,}",
             help=f"{estimate.generations} generations, {estimate.evaluations} judgements, {estimate.refinements} refinements")
    b.metric("Estimated cost (at most)", display.money(estimate.cost_usd), help="From the price table in the configuration.")
    c.metric("Prompts", len(spec.prompts))
    if estimate.unpriced:
        st.warning(f"No price in the configuration for {', '.join(estimate.unpriced)}; their calls are not in the estimate.")
else:
    st.error("This run cannot start yet:")
    st.text(problem)

if st.button("Launch run", type="primary", disabled=bool(problem)):
    try:
        run_id = control.launch(engine, settings, spec, config, name=run_name.strip())
    except DarkroomError as e:
        st.error("The run was not launched (nothing was saved):")
        st.text(e.worded(LABELS.get(e.field, e.field)) if isinstance(e, InputError) else str(e))
        st.stop()
    runner.wake()
    st.session_state["runs_selected"] = run_id
    st.session_state.setdefault("toasts", []).append(f"Run {run_id} queued: {len(spec.prompts)} prompts")
    st.switch_page("pages/runs.py")
