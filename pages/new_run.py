"""New run: upload (or pick) a prompt set, check it, choose the services, see the cost, launch."""

import hashlib

import streamlit as st

from pipeline import display
from pipeline.access import Role, allowed, refusal
from pipeline.errors import DarkroomError, InputError, Problem, PromptSetInvalid
from pipeline.prompts.bundle import BundleLimits, load_upload
from pipeline.prompts.promptset import Limits, compose_prompt
from pipeline.runs import control
from pipeline.runs.estimate import estimate_run
from pipeline.runs.projects import list_projects
from pipeline.runs.prompt_check import analyse_prompts
from pipeline.runs.records import RunConfig
from pipeline.services.catalog import configured_names
from pipeline.store.db import session
from pipeline.store.models import DEFAULT_PROJECT

settings, engine, runner = st.session_state["settings"], st.session_state["engine"], st.session_state["runner"]
run_defaults = settings.run
template = settings.prompt.template

st.title("New run")
role = st.session_state.get("role", Role.admin)
may_launch = allowed(role, "launch")
if not may_launch:  # said first: a reviewer may still check a prompt set, but not launch it
    st.info(refusal(role, "launch"))
source = st.segmented_control("Prompt set from", ["Upload", "Samples"], default="Upload", key="new_run_source")
raw: bytes | None = None
name = ""
if source == "Samples":
    samples = sorted(settings.samples_dir.glob("*.json")) + sorted(settings.samples_dir.glob("*.zip"))  # bundles after
    sample = st.selectbox("Sample prompt set", samples, format_func=lambda p: p.name)
    if sample is not None:
        raw, name = sample.read_bytes(), sample.name
else:
    upload = st.file_uploader("Prompt set (JSON, or a zip bundle of the JSON and its images)", type=["json", "zip"],
                              help="A JSON list of prompts with id, title, scene, mood and prompt; a zip bundle adds the "
                                   "reference images its prompts and characters name (see the README).")
    if upload is not None:
        raw, name = upload.getvalue(), upload.name
if raw is None:
    st.info("Upload a prompt set, or pick one of the samples, to see its prompts and launch a run.")
    st.stop()

try:
    # A bundle's images are checked once per upload, not on every rerun of the page.
    upload_key = (name, hashlib.sha256(raw).hexdigest())
    cached = st.session_state.get("new_run_spec")
    if cached is not None and cached[0] == upload_key:
        spec = cached[1]
    else:
        spec = load_upload(raw, name, Limits.from_settings(settings), BundleLimits.from_settings(settings))
        st.session_state["new_run_spec"] = (upload_key, spec)
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
      "sent to the provider": compose_prompt(p, template), "characters": ", ".join(c.name for c in p.characters),
      "reference images": ", ".join(f"{r.path} ({r.role})" for r in p.all_references()), "tags": ", ".join(p.tags)}
     for p in spec.prompts],
    hide_index=True, width="stretch", height=min(420, 38 + 35 * len(spec.prompts)),
)

st.subheader("Services and loop")
provider_names = configured_names("providers")
judge_names, refiner_names = configured_names("judges"), configured_names("refiners")
with session(engine) as s:  # the project the run belongs to (picked below): its defaults fill the choices
    known_projects = {p.name: dict(p.defaults) for p in list_projects(s)}
project_names = [DEFAULT_PROJECT, *sorted(n for n in known_projects if n != DEFAULT_PROJECT)]
if st.session_state.get("new_run_project") not in (*project_names, ""):  # first visit, or a project deleted since
    wanted_project = st.query_params.get("project", DEFAULT_PROJECT)
    st.session_state["new_run_project"] = wanted_project if wanted_project in project_names else DEFAULT_PROJECT
pd = known_projects.get(st.session_state["new_run_project"], {})  # the project's defaults (empty: Darkroom's own)
left, right = st.columns(2)
with left:
    chain = st.multiselect(
        "Provider chain (in order)", provider_names, default=[n for n in pd.get("providers") or ["offline"] if n in provider_names],
        format_func=lambda n: display.component_label("providers", n),
        help="In fallback routing the first provider generates, and the next ones take over when it fails for good "
             "(breaker open, key refused, model gone, retries used up). Only configured services are offered (see Settings).",
    )
    judge = st.selectbox("Judge", judge_names, index=judge_names.index(pd.get("judge") or "offline")
                         if (pd.get("judge") or "offline") in judge_names else 0,
                         format_func=lambda n: display.component_label("judges", n))
    refiner = st.selectbox("Refiner", refiner_names, index=refiner_names.index(pd.get("refiner") or "offline")
                           if (pd.get("refiner") or "offline") in refiner_names else 0,
                           format_func=lambda n: display.component_label("refiners", n))
with right:
    iterations = st.slider("Iterations per prompt", 1, run_defaults.max_iterations, int(pd.get("iterations") or run_defaults.iterations))
    stop_early = st.toggle("Stop a prompt early at a target score")
    target = st.slider("Target judge score", 0.0, 10.0, 8.0, 0.5, disabled=not stop_early)
    concurrency = st.number_input("Prompts at once", 1, run_defaults.max_concurrency,
                                  run_defaults.concurrency)
    run_name = st.text_input("Run name", value=spec.name)
    project_choice = st.selectbox("Project", [*project_names, ""], format_func=lambda n: n or "New project…", key="new_run_project",
                                  help="Runs, Gallery, Export and Providers filter by project; its defaults fill the choices here")
    project_name = project_choice or st.text_input("New project's name", key="new_run_project_name",
                                                   help="Created with the run; set its defaults and spending cap on the Projects page.")
    enhance = st.toggle("Enhance each prompt before the first image",
                        help="Adds composition, lighting, style and detail through the refiner chain (offline with no keys), "
                             "never changing the subject, counts or named elements. A prompt with \"enhance\": false is left "
                             "as it is. The Gallery shows it as its own step before iteration 1.")
    grid = st.toggle("Grid mode: ask for 2×2 grids and split each into four images",
                     help="Each image asked for becomes one call for a 2×2 grid, split into four images (each judged, "
                          "each the grid's child). A prompt's \"images\": 8 makes two grids; its \"grid\" field overrides "
                          "this. A response that is not a grid is kept whole, with the reason.")

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
    capped = a.toggle("Cap the spending", value=pd.get("budget_usd") is not None)
    budget = b.number_input("Budget (USD)", min_value=0.01, value=float(pd.get("budget_usd") or 5.0), step=1.0, format="%.2f", disabled=not capped,
                            help="The run pauses (resumable) before a call would take it past this.")

def _prompt_analysis(providers: list[str], shown: int = 50) -> None:
    """Each prompt as sent against each provider's window (a bar), with the `check` analysis and flags."""
    analyses = analyse_prompts(settings, spec, providers)
    flagged = sum(1 for a in analyses if a.flags)
    with st.expander(f"Prompt analysis: {flagged} of {len(analyses)} prompt(s) flagged (same as `python -m pipeline check`)",
                     expanded=bool(flagged)):
        for a in analyses[:shown]:
            st.text(f"{a.prompt_id} ({a.path}): {len(a.text):,} characters")
            for f in a.fits:
                state = "over the maximum" if f.over_max else ("compressed for it" if f.over_window else "fits")
                st.progress(min(f.share, 1.0), text=f"{f.window.provider}: {f.describe()} ({state})")
            counts = f", counts: {', '.join(a.counts)}" if a.counts else ""
            readability = f"{a.readability} Flesch" if a.readability is not None else "n/a"
            st.text(f"complexity: {len(a.elements)} elements, {a.relations} relations{counts}; readability: {readability}\n"
                    f"keywords: {', '.join(a.keywords) or '-'}\ncritical elements: {'; '.join(e.label for e in a.elements) or '-'}")
            for flag in a.flags:
                st.text(flag.line())
        if len(analyses) > shown:
            st.text(f"… and {len(analyses) - shown} more: python -m pipeline check FILE --providers {','.join(providers)}")


config = RunConfig(providers=chain, judge=judge or "", refiner=refiner or "", iterations=iterations,
                   target_score=target if stop_early else None, concurrency=int(concurrency),
                   judge_fallbacks=judge_fallbacks, refiner_fallbacks=refiner_fallbacks, routing=routing,
                   block_rewrites=int(block_rewrites), budget_usd=float(budget) if capped else None, enhance=enhance,
                   grid=grid)
# The widget each setting comes from, to name it in a message (the CLI names its option instead).
LABELS = {"providers": "Provider chain", "judge": "Judge and fallback judges", "refiner": "Refiner and fallback refiners",
          "iterations": "Iterations per prompt", "concurrency": "Prompts at once", "target_score": "Target judge score",
          "routing": "Routing", "block_rewrites": "Rewrites after a content block", "budget": "Budget (USD)"}
problem = ""
try:
    config.validate(settings)
except InputError as e:
    problem = e.worded(LABELS.get(e.field, e.field))  # shown with st.text below

prompt_problems: list[Problem] = []
if not problem:
    try:
        control.check_prompt_set(settings, spec, config)
    except PromptSetInvalid as e:
        problem, prompt_problems = "Some prompts cannot be served by this provider chain:", e.problems

if not problem:
    estimate = estimate_run(settings, config, spec.prompts)
    a, b, c = st.columns(3)
    a.metric("Calls (at most)", f"{estimate.calls:,}",
             help=f"{estimate.generations} generations, {estimate.evaluations} judgements, {estimate.refinements} refinements")
    b.metric("Estimated cost (at most)", display.money(estimate.cost_usd), help="From the price table in the configuration.")
    c.metric("Prompts", len(spec.prompts))
    if estimate.unpriced:
        st.warning(f"No price in the configuration for {', '.join(estimate.unpriced)}; their calls are not in the estimate.")
    _prompt_analysis(config.providers)
else:
    st.error("This run cannot start yet:")
    st.text(problem)
    if prompt_problems:
        st.dataframe([{"where (JSON path)": p.path or "(whole file)", "problem": p.message} for p in prompt_problems],
                     hide_index=True, width="stretch")

if st.button("Launch run", type="primary", disabled=bool(problem) or not may_launch):
    try:
        run_id = control.launch(engine, settings, spec, config, name=run_name.strip(), project=project_name.strip() or None)
    except DarkroomError as e:
        st.error("The run was not launched (nothing was saved):")
        st.text(e.worded(LABELS.get(e.field, e.field)) if isinstance(e, InputError) else str(e))
        st.stop()
    runner.wake()
    st.session_state["runs_selected"] = run_id
    st.session_state.setdefault("toasts", []).append(f"Run {run_id} queued: {len(spec.prompts)} prompts")
    st.switch_page("pages/runs.py")
