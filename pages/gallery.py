"""Gallery: the culling grid. Filters, sort, page and thumbnail size live in the URL; click an image to review it.

Cards are drawn by the grid component (pages/components/grid.js): select one or many (click,
Ctrl-click, Shift-click, arrow keys) and press the review keys, or use the bulk actions, which
name their count and scope before anything is written and undo as one batch.
"""

from __future__ import annotations

import dataclasses
import html
import time
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages.components import Actions, apply_exclusively, apply_pending, card_grid, media_url, selected
from pages.components.urlstate import PAGES, compact, config, follow, go, read_view, reviewer, stage_view, write_view
from pipeline import display
from pipeline.errors import InputError
from pipeline.review.changes import LatestChange, latest_change
from pipeline.review.decisions import THUMB_SIZES
from pipeline.review.events import act, last_undoable, undo_last
from pipeline.review.export import build_selection_zip, selection_export_path
from pipeline.review.gallery import SORTS, UNRATED, Card, GalleryFilter, Sort, filter_options, gallery_page
from pipeline.review.ratings import BulkScope, bulk_apply, bulk_scope, summaries
from pipeline.review.view import ViewState
from pipeline.runs.projects import list_projects
from pipeline.store.db import session
from pipeline.store.models import ITEM_STATUSES, row_id

settings, engine = st.session_state["settings"], st.session_state["engine"]
GRID = "gallery_grid"
IDLE_POLL_SECONDS = 0.5  # nothing runs: is there new work (a launch from another tab, a worker, the CLI)?
ACTIVE_POLL_SECONDS = 0.5  # a run is active: new images as they come
# At most one redraw per this long: while a run makes several images a second, redrawing on each
# (the page's own run found new ones, and reran at once) kept the server and the browser busy
# redrawing, and a thumbnail could not finish loading before the next drawing replaced it.
MIN_REDRAW_SECONDS = 0.4
FIRST_IMAGE_WAIT_SECONDS = 1.0  # a launch noticed before its first image: wait up to this long for it, to draw both at once
ACTIONS = {"stars": "star", "clear_stars": "clear_stars", "approve": "approve", "reject": "reject", "clear_decision": "clear_decision"}
BULK_ACTIONS = {"approve": "Approve", "reject": "Reject", "clear_decision": "Clear the decision", "star:5": "5 stars",
                "star:4": "4 stars", "star:3": "3 stars", "star:2": "2 stars", "star:1": "1 star", "clear_stars": "Clear the stars"}
SIZE_LABELS = {"s": "S", "m": "M", "l": "L", "xl": "XL"}
KEYS = [
    ["click the image", "open it in Review"],
    ["click a card · Ctrl+click · Shift+click", "select it · add or remove it · select a range"],
    ["← → ↑ ↓  (J / K)", "move the selection; with Shift, extend it"],
    ["Ctrl+A · Esc", "select the whole page · clear the selection"],
    ["Enter, F or Space", "open the selected card in Review"],
    ["1 – 5 · 0", "stars for the selected cards · clear them"],
    ["P · X · U", "approve · reject · clear the decision"],
    ["Z  or  Ctrl+Z", "undo your last action (a batch as a whole)"],
    ["PageUp / PageDown", "previous / next page"],
    ["?", "this list"],
]


def muted(text: str) -> str:
    return f'<div style="font-size:0.85rem;opacity:.75;white-space:nowrap;overflow:hidden;text-overflow:ellipsis">{html.escape(text)}</div>'


def notice(message: str) -> None:
    st.session_state.setdefault("gallery_notices", []).append(message)


# ---- filters, sort, size and page: URL in, URL out ------------------------------------------------------
FILTER_KEYS = ("g_projects", "g_runs", "g_status", "g_score", "g_stars", "g_decision", "g_provider", "g_tags", "g_text", "g_best", "g_todo",
               "g_disputed", "g_appr")


def filter_from_widgets() -> GalleryFilter:
    ss = st.session_state
    low, high = ss.get("g_score", (0.0, 10.0))
    return GalleryFilter(run_ids=tuple(ss.get("g_runs", ())), project_ids=tuple(ss.get("g_projects", ())), statuses=tuple(ss.get("g_status", ())), score_min=low, score_max=high,
                         stars=tuple(ss.get("g_stars", ())), decisions=tuple(ss.get("g_decision", ())),
                         providers=tuple(ss.get("g_provider", ())), tags=tuple(ss.get("g_tags", ())), text=ss.get("g_text", ""),
                         best_only=ss.get("g_best", False), unreviewed=ss.get("g_todo", False), disputed=ss.get("g_disputed", False),
                         approved_by=int(ss.get("g_appr", 0)))


def projects() -> dict[int, str]:
    """Every project by id: the project filter's options."""
    with session(engine) as s:
        return {row_id(p): p.name for p in list_projects(s)}


def filters_changed() -> None:
    write_view(read_view().with_filter(filter_from_widgets()))


SORT_CHOICES = [f"{key}:{direction}" for key in SORTS for direction in ("desc", "asc")]


def sort_label(choice: str) -> str:
    key, _, direction = choice.partition(":")
    arrow = {"prompt": ("Z→A", "A→Z"), "newest": ("newest first", "oldest first")}.get(key, ("high→low", "low→high"))
    return f"{SORTS[key]}: {arrow[0] if direction == 'desc' else arrow[1]}"


def sort_changed() -> None:
    key, _, direction = (st.session_state.get("g_sort") or "newest:desc").partition(":")
    write_view(read_view().with_sort(Sort(key, direction == "desc")))


def size_changed() -> None:
    view = read_view()
    write_view(dataclasses.replace(view, thumb=st.session_state.get("g_size") or view.thumb))


def per_page_changed() -> None:
    write_view(dataclasses.replace(read_view(), per_page=int(st.session_state["g_per"]), page=1))


def page_changed(key: str) -> None:
    write_view(dataclasses.replace(read_view(), page=int(st.session_state.get(key) or 1)))


def seed_widgets(view: ViewState, runs: dict[int, str], providers: list[str], tags: list[str]) -> None:
    """Every widget shows what the URL says (after back/forward or a pasted link, too)."""
    f = view.filter
    values: dict[str, Any] = {
        "g_runs": [r for r in f.run_ids if r in runs], "g_projects": [p for p in f.project_ids if p in projects()], "g_status": list(f.statuses), "g_score": (f.score_min, f.score_max),
        "g_stars": list(f.stars), "g_decision": list(f.decisions), "g_provider": [p for p in f.providers if p in providers],
        "g_tags": [t for t in f.tags if t in tags], "g_text": f.text, "g_best": f.best_only, "g_todo": f.unreviewed,
        "g_disputed": f.disputed, "g_appr": f.approved_by, "g_sort": f"{view.sort.key}:{'desc' if view.sort.descending else 'asc'}",
        "g_size": view.thumb, "g_per": view.per_page,
    }
    for key, value in values.items():
        st.session_state[key] = value


def sidebar_filters(runs: dict[int, str], providers: list[str], tags: list[str]) -> None:
    with st.sidebar:
        st.header("Filters")
        named = projects()
        st.multiselect("Project", list(named), format_func=lambda i: named.get(i, f"#{i}"), key="g_projects", on_change=filters_changed)
        st.multiselect("Run", list(runs), format_func=lambda i: f"Run {i} · {runs[i]}", key="g_runs", on_change=filters_changed)
        st.toggle("Not yet reviewed by me", key="g_todo", on_change=filters_changed, disabled=not reviewer(),
                  help="Images you have neither starred nor decided on" if reviewer() else "Enter your name first")
        st.toggle("Disputed", key="g_disputed", on_change=filters_changed,
                  help=f"Reviewers disagree: one approved and another rejected, or their stars are {config().disputed_star_spread}+ apart")
        st.number_input("Approved by at least (reviewers, 0 = any)", 0, 99, key="g_appr", on_change=filters_changed)
        st.multiselect("Decision in force", ["approved", "rejected", "none"], key="g_decision", on_change=filters_changed,
                       help=f"Under the {config().decision_rule} rule ([review] decision_rule)")
        st.multiselect("Stars (mean)", [5, 4, 3, 2, 1, UNRATED], key="g_stars", on_change=filters_changed,
                       format_func=lambda n: display.stars(n) if n else "not starred")
        st.slider("Judge score", 0.0, 10.0, step=0.5, key="g_score", on_change=filters_changed)
        st.multiselect("Prompt status", ITEM_STATUSES, key="g_status", on_change=filters_changed)
        st.multiselect("Provider", providers, key="g_provider", on_change=filters_changed)
        st.multiselect("Tag", tags, key="g_tags", on_change=filters_changed)
        st.text_input("Text in the prompt", key="g_text", on_change=filters_changed)
        st.toggle("Best iteration of each prompt only", key="g_best", on_change=filters_changed)
        st.selectbox("Cards per page", list(config().page_sizes), key="g_per", on_change=per_page_changed)


# ---- actions from the grid (keys, clicks) --------------------------------------------------------------
def apply(actions: Actions, done: Callable[[], None] = lambda: None) -> None:
    """Apply ``actions`` under the session's lock: an older run still applying a batch goes first."""
    apply_exclusively(lambda: _apply(actions, done))


def _apply(actions: Actions, done: Callable[[], None]) -> None:
    """Apply the grid's actions in order; one that is refused is reported (before writing anything), the rest stand.

    Nothing touches st.session_state between the first write and the commit (Streamlit may stop a
    callback there for a newer rerun): notices and the URL come after.
    """
    view, me, cfg, notices = read_view(), reviewer(), config(), []
    with session(engine) as s:
        for a in actions:
            try:  # an action is refused before it writes anything: the others stand
                view = _grid_step(s, view, me, cfg, a, notices)
            except InputError as e:
                notices.append(f"Not saved: {e}")
        s.commit()
    done()
    stage_view(view, cfg)  # from here on a stopped run still ends on this view
    for message in notices:
        notice(message)
    write_view(view)


def _grid_step(s: Any, view: ViewState, me: str, cfg: Any, a: dict[str, Any], notices: list[str]) -> ViewState:
    kind = a.get("a")
    if kind == "open" and isinstance(a.get("item"), int):
        number = a.get("number") if isinstance(a.get("number"), int) else 1
        go("review", view.open(a["item"], number, "review"), cfg)
    elif kind == "page" and isinstance(a.get("v"), int):
        return dataclasses.replace(view, page=max(1, view.page + a["v"]))
    elif kind == "undo":
        if not me:
            raise InputError("enter your name in the sidebar first: undo reverses your own last action")
        outcome = undo_last(s, me)
        notices.append(f"Undone: {outcome.changed} image(s) back as they were." if outcome else "Nothing of yours to undo.")
    elif kind in ACTIONS:
        if not me:
            raise InputError("enter your name in the sidebar to rate, approve or reject")
        ids = [i for i in a.get("ids") or [] if isinstance(i, int)]
        value = a.get("v") if kind == "stars" else None
        out = act(s, me, ids, ACTIONS[kind], value, scope=f"{len(ids)} selected image{'s' if len(ids) != 1 else ''}")
        if len(ids) > 1:
            notices.append(f"{kind.replace('_', ' ').capitalize()}: {out.changed} of {len(ids)} selected images changed. "
                           "Z undoes it as one.")
    return view


# ---- bulk actions: count and scope named before anything is written ------------------------------------
def forget_bulk() -> None:
    st.session_state.pop("g_bulk_pending", None)


@st.dialog("Apply to these images?", on_dismiss=forget_bulk)
def confirm_bulk(scope: BulkScope, action: str) -> None:
    st.write(f"**{BULK_ACTIONS[action]}** on **{scope.count:,}** image{'s' if scope.count != 1 else ''}:")
    st.text(scope.description)
    st.write("in your name:")
    st.text(reviewer())
    st.caption("Other reviewers' ratings are never changed. One undo (Z) reverses the whole batch.")
    if st.button(f"Apply to {scope.count:,} image{'s' if scope.count != 1 else ''}", type="primary", disabled=scope.count == 0):
        name, _, value = action.partition(":")
        try:
            with session(engine) as s:
                out = bulk_apply(s, reviewer(), scope, name, int(value) if value else None, note_max_chars=config().note_max_chars)
                s.commit()
            notice(f"{BULK_ACTIONS[action]}: {out.changed:,} of {scope.count:,} images changed ({scope.description}). "
                   "Undo reverses the whole batch.")
        except InputError as e:
            notice(f"Not saved: {e}")
        forget_bulk()
        st.rerun()


def bulk_panel(view: ViewState, total: int, chosen: list[int]) -> None:
    me = reviewer()
    with st.popover("Bulk", icon=":material/done_all:", help="Apply a decision or stars to the selected cards or to the whole filter",
                    width="stretch"):
        scopes = {"selection": f"The selected cards ({len(chosen)})", "filter": f"Everything matching the filter ({total:,})"}
        if bool(chosen) != st.session_state.get("_g_had_selection"):  # a new selection is what the next bulk action is for
            st.session_state["g_bulk_scope"] = "selection" if chosen else "filter"
            st.session_state["_g_had_selection"] = bool(chosen)
        scope = st.radio("Apply to", list(scopes), format_func=scopes.get, key="g_bulk_scope")
        action = st.selectbox("Action", list(BULK_ACTIONS), format_func=BULK_ACTIONS.get, key="g_bulk_action")
        if st.button("Review and apply…", type="primary", disabled=not me or (scope == "selection" and not chosen),
                     help=None if me else "Enter your name in the sidebar first"):
            cfg = config()
            with session(engine) as s:
                if scope == "selection":
                    resolved = bulk_scope(s, iteration_ids=chosen)
                else:
                    resolved = bulk_scope(s, filter=view.filter, reviewer=me, rule=cfg.decision_rule,
                                          disputed_star_spread=cfg.disputed_star_spread)
            st.session_state["g_bulk_pending"] = (resolved, action)
    if pending := st.session_state.get("g_bulk_pending"):
        confirm_bulk(*pending)


def export_button(view: ViewState, total: int) -> None:
    f, sort, me, rule = view.filter, view.sort, reviewer(), config().decision_rule

    def build() -> Any:  # runs when clicked (on its own thread), not on every redraw
        with session(engine) as s:
            result = build_selection_zip(s, settings, f, selection_export_path(settings), reviewer=me, rule=rule, sort=sort)
        return result.path.open("rb")

    st.download_button("Export", data=build, file_name="darkroom_selection.zip", mime="application/zip", icon=":material/folder_zip:",
                       on_click="ignore", disabled=total == 0, width="stretch", key="g_export",
                       help=f"Export this selection: a zip of exactly the {total:,} images this grid shows (every page), "
                            "with manifest.csv and manifest.json carrying every reviewer's rating")


def undo_button() -> None:
    me = reviewer()
    with session(engine) as s:
        info = last_undoable(s, me) if me else None
    st.button("Undo", icon=":material/undo:", disabled=info is None, width="stretch", key="g_undo",
              help=f"Undo {info.label} (Z)" if info else "Nothing of yours to undo", on_click=apply, args=([{"a": "undo"}],))


# ---- new work, noticed without a click ---------------------------------------------------------------------
def latest() -> LatestChange:
    with session(engine) as s:
        return latest_change(s)


def wait_for_an_image(last_image: int) -> None:
    """A run has just started: its first image is usually a fraction of a second away. Waiting for
    it here (a few indexed queries, bounded) draws the page once with that image, instead of once
    for the launch and again at the next tick."""
    deadline = time.monotonic() + FIRST_IMAGE_WAIT_SECONDS
    while time.monotonic() < deadline and latest().last_image == last_image:
        time.sleep(0.05)


def live_updates(drawn: LatestChange) -> None:
    """Redraw the page when there is new work: a launch, an image, a score, a run's end.

    ``drawn`` is what the page was drawn from (read before its queries, so nothing slips between).
    A small timer compares it with :func:`latest_change`, one statement over indexes, and reruns
    the page only when it differs, and not within ``MIN_REDRAW_SECONDS`` of the last drawing:
    every ``ACTIVE_POLL_SECONDS`` while a run is active, else every ``IDLE_POLL_SECONDS``, so a
    Gallery opened before a launch (in another tab, by a worker or the CLI) shows the run's first
    image by itself. The interval is set by each full run.
    """
    st.session_state["_g_drawn"] = drawn
    st.session_state["_g_drawn_at"] = time.monotonic()

    @st.fragment(run_every=ACTIVE_POLL_SECONDS if drawn.running else IDLE_POLL_SECONDS)
    def poll() -> None:
        if time.monotonic() - st.session_state.get("_g_drawn_at", 0.0) < MIN_REDRAW_SECONDS:
            return  # the page has only just been drawn (this is its own run): the timer looks next
        now, drawn = latest(), st.session_state.get("_g_drawn")
        if now == drawn:
            return
        if drawn is not None and now.running and not drawn.running and now.last_image == drawn.last_image:
            wait_for_an_image(drawn.last_image)
        st.rerun(scope="app")

    poll()


# ---- the page ---------------------------------------------------------------------------------------------
def card_data(c: Card, others: str) -> dict[str, Any]:
    in_force = ("needs a tie-break" if c.needs_tiebreak else c.decision) + (f" ({config().decision_rule} rule)" if c.decision != "none"
                                                                           or c.needs_tiebreak else "")
    tip = f"{c.prompt_key} · run {c.run_id} · iteration {c.number} · {c.provider}" + (f"\n{others}" if others else "")
    return {
        "id": c.iteration_id, "item": c.run_item_id, "number": c.number, "title": c.title or c.prompt_key, "tip": tip,
        "url": media_url(c.thumb, c.thumb_mime or "image/jpeg", f"thumb.{c.iteration_id}") if c.thumb else None,
        "score": c.score, "decision": c.decision, "tiebreak": c.needs_tiebreak, "in_force_label": in_force, "disputed": c.disputed,
        "my_stars": c.my_stars, "my_decision": c.my_decision, "mean": c.mean_stars or 0.0, "count": c.star_count, "best": c.is_best,
        "others_text": others,
    }


def toolbar(view: ViewState, total: int, page_no: int, pages: int, chosen: list[int]) -> None:
    cols = st.columns([1.05, 1.55, 2.1, 1.9, 1.0, 1.0, 1.1], vertical_alignment="center")
    cols[0].title("Gallery", anchor=False)
    cols[1].html(f'<div data-testid="drGalleryCount" style="opacity:.8;white-space:nowrap">{total:,} image{"s" if total != 1 else ""}'
                 f" · page {page_no} of {pages}</div>")
    cols = cols[1:]
    cols[1].selectbox("Sort", SORT_CHOICES, format_func=sort_label, key="g_sort", on_change=sort_changed, label_visibility="collapsed")
    cols[2].segmented_control("Thumbnail size", list(THUMB_SIZES), format_func=SIZE_LABELS.get, key="g_size", on_change=size_changed,
                              label_visibility="collapsed", required=True, width="stretch")
    with cols[3]:
        undo_button()
    with cols[4]:
        bulk_panel(view, total, chosen)
    with cols[5]:
        export_button(view, total)


def grid() -> None:
    apply_pending(GRID, apply)
    follow("gallery")
    view = read_view()
    if view.item is not None and view.mode in ("review", "compare"):  # a review link opened on this page
        st.switch_page(PAGES["review"], query_params=st.query_params.to_dict())
    compact()
    for message in st.session_state.pop("gallery_notices", []):
        st.toast(message)
    cfg, me = config(), reviewer()
    drawn = latest()
    with session(engine) as s:
        options = filter_options(s)
    if not options.runs:
        st.title("Gallery")
        st.info("Nothing to review yet: launch a run on the **New run** page. Its images appear here as they are made.")
        live_updates(drawn)
        return
    runs = dict(options.runs)
    seed_widgets(view, runs, options.providers, options.tags)
    sidebar_filters(runs, options.providers, options.tags)
    try:
        with session(engine) as s:
            page = gallery_page(s, view.filter, view.page, view.per_page, sort=view.sort, reviewer=me, rule=cfg.decision_rule,
                                disputed_star_spread=cfg.disputed_star_spread)
            sums = summaries(s, [c.iteration_id for c in page.cards], me, cfg.decision_rule)
    except InputError as e:
        st.error("These filters cannot be applied:")
        st.text(str(e))
        live_updates(drawn)
        return
    chosen = selected(GRID)
    toolbar(view, page.total, page.page, page.pages, chosen)
    cards = []
    for c in page.cards:
        summary = sums.get(c.iteration_id)
        others = "; ".join(f"{o.reviewer}: {display.stars(o.stars) or 'no stars'}{'' if o.decision == 'none' else ' ' + o.decision}"
                           for o in (summary.others if summary else []))
        cards.append(card_data(c, others))
    empty = "No images match these filters." if page.total == 0 else ""
    card_grid({"cards": cards, "size": view.thumb_px, "enabled": bool(me), "help": KEYS, "empty": empty,
               "page_key": f"{sorted(view.filter.__dict__.items())!r}|{view.sort}|{page.page}|{view.per_page}"},
              key=GRID, on_actions=apply)
    if page.pages > 1:
        st.pagination(page.pages, default=page.page, key=f"g_page_{page.page}", on_change=page_changed, args=(f"g_page_{page.page}",))
    if not me:
        st.caption("Enter your name in the sidebar to rate and decide; your name is kept in this browser.")
    live_updates(drawn)


grid()
