"""Gallery: a filtered grid of thumbnails, and per prompt every iteration side by side for review."""

import streamlit as st

from pipeline import display
from pipeline.errors import InputError
from pipeline.review.gallery import UNRATED, GalleryFilter, filter_options, gallery_page, image_file, prompt_detail
from pipeline.review.ratings import approve_best, best_iterations, rate
from pipeline.review.textdiff import diff_counts, diff_html
from pipeline.store.db import session
from pipeline.store.models import ITEM_STATUSES

settings, engine = st.session_state["settings"], st.session_state["engine"]
reviewer = st.session_state.get("reviewer", "").strip()
COLUMNS = 6


# ---- saving reviews (callbacks run before the page redraws) -----------------------------------------
def save(iteration_id: int, **fields) -> None:  # type: ignore[no-untyped-def]
    try:
        with session(engine) as s:
            rate(s, iteration_id, reviewer, **fields)
            s.commit()
    except InputError as e:
        st.session_state["gallery_error"] = str(e)


def save_stars(iteration_id: int, key: str) -> None:
    value = st.session_state.get(key)
    save(iteration_id, stars=None if value is None else value + 1)


def save_note(iteration_id: int, key: str) -> None:
    save(iteration_id, note=st.session_state.get(key, ""))


def open_item(run_item_id: int) -> None:
    st.query_params["item"] = str(run_item_id)


def close_item() -> None:
    st.query_params.pop("item", None)


@st.dialog("Full-size image", width="large")
def full_size(iteration_id: int) -> None:
    with session(engine) as s:
        path = image_file(s, settings, iteration_id)
    if path.is_file():
        st.image(str(path))
        st.caption(str(path))
    else:
        st.error(f"The image file is missing on disk: {path}")


def forget_bulk() -> None:
    st.session_state.pop("g_bulk_pending", None)


@st.dialog("Approve the best iterations?", on_dismiss=forget_bulk)
def confirm_bulk(min_score: float, run_ids: tuple[int, ...]) -> None:
    """Shown while ``g_bulk_pending`` is set, so it survives reruns until approved or dismissed."""
    with session(engine) as s:
        count = len(best_iterations(s, min_score, run_ids))
    scope = f"run(s) {', '.join(map(str, run_ids))}" if run_ids else "every run"
    st.write(f"This approves, as **{reviewer}**, the best iteration of **{count}** prompt(s) in {scope} "
             f"scoring at least **{min_score:.1f}**.")
    if st.button("Approve them", type="primary", disabled=count == 0):
        with session(engine) as s:
            approved = approve_best(s, reviewer, min_score, run_ids)
            s.commit()
        forget_bulk()
        st.session_state["gallery_notice"] = f"Approved {approved} image(s)."
        st.rerun()


# ---- one prompt in detail -------------------------------------------------------------------------------
def detail(run_item_id: int) -> None:
    with session(engine) as s:
        d = prompt_detail(s, run_item_id, reviewer)
    st.button("← Back to the grid", on_click=close_item)
    st.title(f"{d.prompt.key} · {d.prompt.title or d.prompt.prompt[:60]}")
    st.caption(f"Run {d.run.id} ({d.run.name}) · prompt {display.status(d.item.status)}"
               + (f" · best: iteration {d.item.final_iteration} ({d.item.best_score:.2f})" if d.item.best_score is not None else ""))
    with st.expander("Original prompt and its elements", expanded=False):
        st.markdown(f"**Prompt:** {d.prompt.prompt}  \n**Scene:** {d.prompt.scene or '–'} · **Mood:** {d.prompt.mood or '–'}")
        if d.elements:
            st.dataframe([{"#": e.number, "element": e.question, "category": e.category, "critical": e.critical} for e in d.elements],
                         hide_index=True)
    if d.item.error_message:
        st.error(f"{d.item.error_kind}: {d.item.error_message}")
    if not reviewer:
        st.warning("Enter your name in the sidebar to rate, approve or reject.")
    if not d.iterations:
        st.info("No iterations yet.")
        return
    for column, view in zip(st.columns(len(d.iterations)), d.iterations, strict=True):
        with column, st.container(border=True):
            it, ev = view.iteration, view.evaluation
            best = " · best" if it.number == d.item.final_iteration else ""
            st.markdown(f"#### Iteration {it.number}{best}")
            if view.is_image and view.thumb:
                st.image(view.thumb, width="stretch")
                st.button("Full size", key=f"full-{it.id}", icon=":material/open_in_full:", on_click=full_size, args=(it.id,))
            else:
                st.error(f"{display.status(it.status)}: {it.error_kind} {it.error_message}")
            st.caption(f"{display.component_label('providers', it.provider)} · {it.model} · seed {it.seed} · "
                       f"{display.money(it.cost_usd)} · {display.duration((it.latency_ms or 0) / 1000)}")
            for note in (display.routing_note(it.routing), display.routing_note(ev.routing if ev is not None else None)):
                if note:
                    st.caption(f":material/alt_route: {note}")
            if ev is not None:
                delta = f"{view.score_delta:+.2f}" if view.score_delta is not None else None
                st.metric("Judge score", f"{ev.overall_score:.2f}", delta=delta, help=f"judge: {display.component_label('judges', ev.judge)}")
            st.markdown("**Prompt**" + (" (changes from the previous iteration)" if view.diff else ""))
            if view.diff:
                ins, dels = diff_counts(view.diff)
                st.html(f'<div style="line-height:1.5">{diff_html(view.diff)}</div>')
                st.caption(f"+{ins} / −{dels} words" + (f" · refiner: {view.rationale}" if view.rationale else ""))
            else:
                st.write(it.prompt_text)
            if ev is not None:
                with st.expander("Criteria, checks and issues", expanded=True):
                    st.markdown(" · ".join(f"{k} **{v:.1f}**" for k, v in ev.criteria.items() if v is not None))
                    for c in ev.checks:
                        st.markdown(f"{display.ANSWER_ICONS.get(c.get('answer', ''), '•')} {c.get('question', '')}  \n"
                                    f":gray[{c.get('evidence', '')}]")
                    for issue in ev.issues:
                        st.markdown(f"- **{issue.get('kind', '')}**: {issue.get('description', '')}  \n"
                                    f"  → *{issue.get('suggestion', '')}*")
            if view.is_image:
                review(view)


def review(view) -> None:  # type: ignore[no-untyped-def]
    it, mine = view.iteration, view.mine
    decision = mine.decision if mine else "none"
    key = f"stars-{it.id}-{reviewer}"
    st.feedback("stars", key=key, default=(mine.stars - 1) if mine and mine.stars else None, disabled=not reviewer,
                on_change=save_stars, args=(it.id, key))
    a, r = st.columns(2)
    a.button("Approve", key=f"approve-{it.id}", type="primary" if decision == "approved" else "secondary", disabled=not reviewer,
             icon=":material/check:", on_click=save, args=(it.id,), kwargs={"decision": "approved"}, width="stretch")
    r.button("Reject", key=f"reject-{it.id}", type="primary" if decision == "rejected" else "secondary", disabled=not reviewer,
             icon=":material/close:", on_click=save, args=(it.id,), kwargs={"decision": "rejected"}, width="stretch")
    note_key = f"note-{it.id}-{reviewer}"
    st.text_input("Note", key=note_key, value=mine.note if mine else "", disabled=not reviewer,
                  on_change=save_note, args=(it.id, note_key), placeholder="Saved when you press Enter")
    others = [x for x in view.ratings if x.reviewer != reviewer]
    if others:
        st.caption("Others: " + "; ".join(f"{x.reviewer} {display.stars(x.stars)} {x.decision}" for x in others))


# ---- the grid ---------------------------------------------------------------------------------------------
def grid() -> None:
    st.title("Gallery")
    with session(engine) as s:
        options = filter_options(s)
    if not options.runs:
        st.info("Nothing to review yet: launch a run on the **New run** page.")
        return
    run_names = dict(options.runs)
    with st.sidebar:
        st.header("Filters")
        run_ids = st.multiselect("Run", list(run_names), format_func=lambda i: f"Run {i} · {run_names[i]}", key="g_runs")
        statuses = st.multiselect("Prompt status", ITEM_STATUSES, key="g_status")
        low, high = st.slider("Judge score", 0.0, 10.0, (0.0, 10.0), 0.5, key="g_score")
        stars = st.multiselect("Stars", [5, 4, 3, 2, 1, UNRATED], key="g_stars",
                               format_func=lambda n: display.stars(n) if n else "not starred")
        decisions = st.multiselect("Decision", ["approved", "rejected", "none"], key="g_decision")
        providers = st.multiselect("Provider", options.providers, key="g_provider")
        tags = st.multiselect("Tag", options.tags, key="g_tags")
        text = st.text_input("Text in the prompt", key="g_text")
        best_only = st.toggle("Best iteration of each prompt only", key="g_best")
        per_page = st.select_slider("Per page", [12, 24, 48], value=24, key="g_per_page")
    f = GalleryFilter(run_ids=tuple(run_ids), statuses=tuple(statuses), score_min=low, score_max=high, stars=tuple(stars),
                      decisions=tuple(decisions), providers=tuple(providers), tags=tuple(tags), text=text, best_only=best_only)

    if notice := st.session_state.pop("gallery_notice", None):
        st.success(notice)
    with st.expander("Bulk approve"):
        threshold = st.slider("Approve the best iteration of every prompt scoring at least", 0.0, 10.0, 8.0, 0.5, key="g_bulk")
        scope = "the runs chosen in the filter" if run_ids else "every run"
        if st.button(f"Approve best ≥ {threshold:.1f} in {scope}…", disabled=not reviewer,
                     help=None if reviewer else "Enter your name in the sidebar first"):
            st.session_state["g_bulk_pending"] = (threshold, tuple(run_ids))
        if pending := st.session_state.get("g_bulk_pending"):
            confirm_bulk(*pending)

    page_no = st.session_state.get("g_page", 1)
    with session(engine) as s:
        page = gallery_page(s, f, page_no, per_page)
    st.caption(f"{page.total:,} image(s) · page {page.page} of {page.pages}")
    if not page.cards:
        st.info("No images match these filters.")
        return
    for start in range(0, len(page.cards), COLUMNS):
        for column, card in zip(st.columns(COLUMNS), page.cards[start:start + COLUMNS], strict=False):
            with column, st.container(border=True):
                if card.thumb:
                    st.image(card.thumb, width="stretch")
                best = " · ★best" if card.is_best else ""
                st.markdown(f"**{card.prompt_key}** · it {card.number}{best}  \n"
                            f"{display.score_badge(card.score)} {display.DECISION_BADGES.get(card.decision, '')} "
                            f"{display.stars(card.stars)}")
                st.button("Open", key=f"open-{card.iteration_id}", on_click=open_item, args=(card.run_item_id,), width="stretch")
    st.pagination(page.pages, default=page.page, key="g_page")


if error := st.session_state.pop("gallery_error", None):
    st.error(error)
item = st.query_params.get("item")
if item and item.isdigit():
    try:
        detail(int(item))
    except InputError as e:
        st.error(str(e))
        st.button("← Back to the grid", on_click=close_item)
else:
    grid()
