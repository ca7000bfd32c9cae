"""Review: one prompt at a time, every iteration side by side at the largest size that fits, rated from the keyboard.

Reached from the Gallery (click an image); the selection, sort, open prompt and focused
iteration are in the URL. Keys and buttons make the same actions, applied by :func:`apply`.
"""

from __future__ import annotations

import dataclasses
import html
import zlib
from collections.abc import Callable
from typing import Any

import streamlit as st

from pages.components import Actions, apply_exclusively, apply_pending, media_url, review_desk
from pages.components.urlstate import compact, config, follow, go, read_view, reviewer, stage_view, write_view
from pipeline import display
from pipeline.access import Role, allowed, refusal
from pipeline.errors import DarkroomError, InputError, StorageError
from pipeline.review.events import act as record
from pipeline.review.events import history, last_undoable, undo_last
from pipeline.review.gallery import Position, PromptDetail, image_object, item_images, prompt_detail, review_position, same_prompt_images
from pipeline.review.lineage import Lineage, lineage_of
from pipeline.review.ratings import ImageSummary, summaries
from pipeline.review.textdiff import diff_counts
from pipeline.review.view import ViewState
from pipeline.runs.shots import grid_settings, step_of
from pipeline.runs.variations import launch_variations
from pipeline.store.db import session

settings, engine = st.session_state["settings"], st.session_state["engine"]
DESK = "review_desk"
AUTO = "dr_auto_advance"
NOTE_LABEL = "Note"
VARIATIONS_FOR = "dr_variations_for"  # the image whose Variations dialog is open (V, or the button)
RATING_ACTIONS = {"stars": "star", "clear_stars": "clear_stars", "approve": "approve", "reject": "reject",
                  "clear_decision": "clear_decision", "note": "note"}
KEYS = [
    ["← / →  or  J / K", "previous / next prompt in this selection and sort"],
    ["Tab / Shift+Tab", "focus the next / previous iteration"],
    ["Alt+1–9 (or Shift+1–9)", "focus iteration 1–9"],
    ["1 – 5", "stars for the focused iteration"],
    ["0", "clear its stars"],
    ["P", "approve"],
    ["X", "reject"],
    ["U", "clear the decision"],
    ["Z  or  Ctrl+Z", "undo your last action (a bulk action as a whole)"],
    ["F  or  Space", "loupe: full screen; click or + for 100 %, drag to pan, Home to fit"],
    ["C", "compare two iterations (slider, side by side, overlay; M switches)"],
    ["O", "compare the focused image with its parent (the grid it was cut from, the image it varies or refines)"],
    ["V", "variations: make new images from the focused image (it is their subject reference)"],
    ["I", "details: checks, criteria, issues, the prompt diff, history"],
    ["N", "write a note (Enter saves, Esc leaves the box)"],
    ["A", "auto-advance to the next prompt after a decision (on/off)"],
    ["G  or  Esc", "back to the grid (Esc first closes what is open)"],
    ["?", "this list"],
]


# ---- actions (run as callbacks, before the page is drawn) ----------------------------------------------
def _focused_id(s: Any, view: ViewState) -> int:
    d = prompt_detail(s, view.item)
    images = [v.iteration for v in d.iterations if v.is_image]
    if not images:
        raise InputError("this prompt has no image to rate yet")
    chosen = next((it for it in images if it.number == view.focus), images[0])
    return int(chosen.id)


@dataclasses.dataclass
class Batch:
    """What applying a batch of actions needs from the session, read before the database work starts.

    Streamlit may stop a callback at any access to st.session_state or st.query_params (for a newer
    rerun), so none happens between the first write and the commit.
    """

    me: str
    cfg: Any
    auto: bool
    notices: list[str] = dataclasses.field(default_factory=list)


def _move(s: Any, b: Batch, view: ViewState, step: int) -> ViewState:
    pos = review_position(s, view.filter, view.item, sort=view.sort, reviewer=b.me, rule=b.cfg.decision_rule,
                          disputed_star_spread=b.cfg.disputed_star_spread)
    target = pos.next_item if step > 0 else pos.prev_item
    if target is None:
        b.notices.append("That was the last prompt in this selection." if step > 0 else "This is the first prompt in this selection.")
        return view
    return view.open(target, 1, "review")


def _step(s: Any, b: Batch, view: ViewState, action: dict[str, Any]) -> ViewState:
    kind = action.get("a")
    if kind in ("next", "prev"):
        return _move(s, b, view, 1 if kind == "next" else -1)
    if kind == "focus":
        value = action.get("v")
        return view.open(view.item, int(value), view.mode) if isinstance(value, int) and view.item is not None else view
    if kind == "grid":
        go("gallery", view.to_grid(), b.cfg)
        return view
    if kind == "auto":
        b.auto = not b.auto
        b.notices.append("Auto-advance " + ("on: a decision moves to the next prompt." if b.auto else "off."))
        return view
    if kind == "compare":
        ids = tuple(i for i in action.get("ids") or () if isinstance(i, int))[:2]
        return dataclasses.replace(view, mode="compare", compare=ids) if len(ids) == 2 else view
    if kind == "close_compare":
        return dataclasses.replace(view, mode="review", compare=())
    if kind == "compare_parent":
        focused = _focused_id(s, view)
        family = lineage_of(s, focused)
        if family is None or not family.parents:
            b.notices.append("This image has no parent image: it was generated from the prompt.")
            return view
        return dataclasses.replace(view, mode="compare", compare=(family.parents[0].iteration_id, focused))
    if kind == "variations":
        st.session_state[VARIATIONS_FOR] = _focused_id(s, view)
        return view
    if kind == "undo":
        if not b.me:
            raise InputError("enter your name in the sidebar first: undo reverses your own last action")
        outcome = undo_last(s, b.me)
        b.notices.append(f"Undone: {outcome.changed} image(s) back as they were." if outcome else "Nothing of yours to undo.")
        return view
    if kind in RATING_ACTIONS:
        if not b.me:
            raise InputError("enter your name in the sidebar to rate, approve or reject")
        value = action.get("v") if kind in ("stars", "note") else None
        record(s, b.me, [_focused_id(s, view)], RATING_ACTIONS[kind], value, note_max_chars=b.cfg.note_max_chars)
        if kind in ("approve", "reject") and b.auto:
            return _move(s, b, view, 1)
        return view
    return view


def apply(actions: Actions, done: Callable[[], None] = lambda: None) -> None:
    """Apply ``actions`` under the session's lock: an older run still applying a batch goes first."""
    apply_exclusively(lambda: _apply(actions, done))


def _apply(actions: Actions, done: Callable[[], None]) -> None:
    """Apply the actions in order (keys typed ahead included), then put the resulting view in the URL.

    One that cannot be applied (no name yet, no image) is reported and skipped; it is refused
    before it writes anything, so the others stand.
    """
    b = Batch(reviewer(), config(), bool(st.session_state.get(AUTO, False)))
    view = read_view()
    auto_before = b.auto
    with session(engine) as s:
        for action in actions:
            try:  # an action is refused before it writes anything: the others stand
                view = _step(s, b, view, action)
            except InputError as e:
                b.notices.append(f"Not saved: {e}")
        s.commit()
    done()
    stage_view(view, b.cfg)  # from here on a stopped run still ends on this view
    if b.auto != auto_before:
        st.session_state[AUTO] = b.auto
    st.session_state.setdefault("review_notices", []).extend(b.notices)
    write_view(view)


def act(action: dict[str, Any]) -> None:
    """A button's action (the same path as a key)."""
    apply([action])


def on_stars(key: str) -> None:
    value = st.session_state.get(key)
    apply([{"a": "clear_stars"} if value is None else {"a": "stars", "v": int(value) + 1}])


def flip_auto() -> None:
    st.session_state[AUTO] = not st.session_state.get(AUTO, False)


def on_note(key: str) -> None:
    apply([{"a": "note", "v": st.session_state.get(key, "")}])


# ---- what the desk component draws -----------------------------------------------------------------------
def _details(view: Any, item_history: list[str]) -> dict[str, Any]:
    it, ev = view.iteration, view.evaluation
    meta = (f"{display.component_label('providers', it.provider)} · {it.model} · seed {it.seed} · {it.width}×{it.height} · "
            f"{display.money(it.cost_usd)} · {display.duration((it.latency_ms or 0) / 1000)}")
    notes = [n for n in (display.routing_note(it.routing), display.routing_note(ev.routing if ev is not None else None)) if n]
    out: dict[str, Any] = {"prompt": it.prompt_text, "rationale": view.rationale, "meta": " · ".join([meta, *notes]),
                           "history": item_history}
    if view.diff:
        ins, dels = diff_counts(view.diff)
        out["diff"] = [[p.op, p.text] for p in view.diff]
        out["diff_counts"] = f"+{ins} / −{dels} words"
    if ev is not None:
        out["criteria"] = [[str(k), f"{v:.1f}"] for k, v in ev.criteria.items() if isinstance(v, (int, float))]
        out["checks"] = [{"answer": str(c.get("answer", "")), "question": str(c.get("question", "")),
                          "evidence": str(c.get("evidence", ""))} for c in ev.checks]
        out["issues"] = [{"kind": str(x.get("kind", "")), "description": str(x.get("description", "")),
                          "suggestion": str(x.get("suggestion", ""))} for x in ev.issues]
    return out


def _image_url(s: Any, iteration: Any, slot: str) -> str | None:
    return _file_url(s, iteration.id, iteration.mime_type or "image/jpeg", slot)


def _file_url(s: Any, iteration_id: int, mime_type: str, slot: str) -> str | None:
    """The full-size image's URL, or None when the iteration has no image (yet, or any more, or its bucket
    cannot be read now: the thumbnail stays on screen)."""
    try:
        store, key = image_object(s, settings, iteration_id)
        path = store.local_path(key)
        if path is not None:  # the data folder: Streamlit serves the file itself
            return media_url(path, mime_type, f"{slot}.{iteration_id}") if path.is_file() else None
        return media_url(store.get(key), mime_type, f"{slot}.{iteration_id}")  # a bucket: the bytes
    except (InputError, StorageError):
        return None


def _iteration_data(s: Any, view: Any, summary: ImageSummary | None, item_history: list[str], best: int | None) -> dict[str, Any]:
    it, ev = view.iteration, view.evaluation
    url = _image_url(s, it, "review") if view.is_image else None
    others = summary.others if summary else []
    data: dict[str, Any] = {
        "id": it.id, "number": it.number, "url": url, "w": it.width or 1024, "h": it.height or 1024,
        "label": ("best · " if it.number == best else "") + display.component_label("providers", it.provider).split(" (")[0],
        "score": ev.overall_score if ev is not None else None, "delta": view.score_delta,
        "error": None if view.is_image else f"{it.status}: {it.error_kind} {it.error_message}".strip(),
        "mine_stars": summary.mine.stars if summary and summary.mine else None,
        "mine_decision": summary.mine.decision if summary and summary.mine else "none",
        "in_force": summary.in_force.decision if summary else "none",
        "in_force_label": summary.in_force.label if summary and (summary.in_force.decision != "none" or summary.in_force.needs_tiebreak) else "",
        "tiebreak": bool(summary and summary.in_force.needs_tiebreak),
        "mean": summary.mean_stars if summary and summary.mean_stars is not None else 0.0,
        "count": summary.star_count if summary else 0,
        "others": [[o.reviewer, o.stars, o.decision, o.note] for o in others],
        "others_text": "; ".join(f"{o.reviewer}: {display.stars(o.stars) or 'no stars'} {'' if o.decision == 'none' else o.decision}".strip()
                                 for o in others),
    }
    data["details"] = _details(view, item_history)
    return data


def _prefetch(s: Any, items: list[int | None]) -> list[str]:
    """Full-size image URLs of the neighbouring prompts: the browser loads them before ← / → is pressed."""
    found = item_images(s, [i for i in items if i is not None])
    return [u for iteration_id, mime in found if (u := _file_url(s, iteration_id, mime, "prefetch"))]


def _compare(s: Any, view: ViewState, d: PromptDetail) -> dict[str, Any]:
    """What compare may show: this prompt's iterations, and its images from other runs (other
    providers, models, settings). Only the chosen pair's files are registered with the media
    store: the others are an id and a label until picked."""
    candidates: list[dict[str, Any]] = []
    for v in d.iterations:
        if v.is_image:
            score = f" · {v.evaluation.overall_score:.1f}" if v.evaluation is not None else ""
            candidates.append({"id": v.iteration.id, "mime": v.iteration.mime_type or "image/jpeg",
                               "label": f"Run {d.run.id} · iteration {v.iteration.number} · {v.iteration.provider}{score}"})
    candidates += [{"id": o.iteration_id, "mime": o.mime_type, "label": o.label} for o in same_prompt_images(s, d.item.id)]
    shown = [{"id": c["id"], "label": c["label"]} for c in candidates]
    if view.mode != "compare" or len(view.compare) != 2:
        return {"candidates": shown}
    pair = []
    for iteration_id in view.compare:
        known = next((c for c in candidates if c["id"] == iteration_id), None)
        mime = known["mime"] if known else "image/jpeg"
        url = _file_url(s, iteration_id, mime, "compare")
        if url is None:
            return {"candidates": shown}
        pair.append({"id": iteration_id, "url": url, "label": known["label"] if known else f"image {iteration_id}"})
        if known is None:
            shown.append({"id": iteration_id, "label": f"image {iteration_id}"})
    return {"candidates": shown, "pair": pair}


# ---- the page ---------------------------------------------------------------------------------------------
def header(d: PromptDetail, pos: Position) -> None:
    back, title, where, prev, nxt, keys = st.columns([1.1, 5, 2.6, 0.9, 0.9, 0.8], vertical_alignment="center")
    back.button("Grid", icon=":material/grid_view:", on_click=act, args=({"a": "grid"},), help="Back to the same grid page (G or Esc)",
                width="stretch")
    title.html(f'<div style="font-size:1.15rem;font-weight:600;white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
               f"{_escape(d.prompt.key)} · {_escape(d.prompt.title or d.prompt.prompt[:80])}</div>")
    n = f"{pos.index:,}" if pos.index is not None else "–"
    where.html(f'<div data-testid="drPosition" style="white-space:nowrap">{n} of {pos.total:,} in this selection</div>')
    prev.button("", icon=":material/chevron_left:", on_click=act, args=({"a": "prev"},), help="Previous prompt (← or J)",
                disabled=pos.prev_item is None, key="dr_prev", width="stretch")
    nxt.button("", icon=":material/chevron_right:", on_click=act, args=({"a": "next"},), help="Next prompt (→ or K)",
               disabled=pos.next_item is None, key="dr_next", width="stretch")
    with keys.popover("", icon=":material/keyboard:", help="Keyboard shortcuts (?)", width="stretch"):
        st.table({"keys": [k for k, _ in KEYS], "action": [a for _, a in KEYS]})


def _escape(text: str) -> str:
    return html.escape(text)


def small(text: str) -> None:
    """A muted line that may hold user text (escaped: never markdown)."""
    st.html(f'<div style="font-size:0.8rem;opacity:.7">{_escape(text)}</div>')


def controls(d: PromptDetail, focus_view: Any, summary: ImageSummary | None, undo_label: str | None) -> None:
    me = reviewer()
    it = focus_view.iteration
    mine = summary.mine if summary else None
    decision = mine.decision if mine else "none"
    cols = st.columns([0.8, 1.45, 1.25, 1.1, 0.5, 0.5, 2.3, 1.6], vertical_alignment="center")
    cell = f" · cell {it.cell_index}" if it.cell_index else ""  # a grid cell is row N*100 + cell of iteration N
    cols[0].html(f'<div style="white-space:nowrap">Iteration <b>{step_of(it.number)}</b>{cell}</div>')
    # Keys carry the value they show: a widget state the browser sends before it has the newest
    # value (keys typed ahead) then belongs to a widget no longer drawn and changes nothing.
    stars = mine.stars if mine and mine.stars else 0
    stars_key = f"dr_stars_{it.id}_{stars}"
    with cols[1]:
        st.feedback("stars", key=stars_key, default=stars - 1 if stars else None, disabled=not me or not focus_view.is_image,
                    on_change=on_stars, args=(stars_key,))
    cols[2].button("Approve", icon=":material/check:", type="primary" if decision == "approved" else "secondary", disabled=not me,
                   on_click=act, args=({"a": "approve"},), help="Approve (P)", width="stretch", key="dr_approve")
    cols[3].button("Reject", icon=":material/close:", type="primary" if decision == "rejected" else "secondary", disabled=not me,
                   on_click=act, args=({"a": "reject"},), help="Reject (X)", width="stretch", key="dr_reject")
    cols[4].button("", icon=":material/backspace:", on_click=act, args=({"a": "clear_decision"},), disabled=not me or decision == "none",
                   help="Clear your decision (U)", width="stretch", key="dr_clear")
    cols[5].button("", icon=":material/undo:", on_click=act, args=({"a": "undo"},), disabled=not me or undo_label is None,
                   help=f"Undo {undo_label} (Z)" if undo_label else "Nothing to undo", width="stretch", key="dr_undo")
    note = mine.note if mine else ""
    note_key = f"dr_note_{it.id}_{zlib.crc32(note.encode())}"
    cols[6].text_input(NOTE_LABEL, value=note, key=note_key, label_visibility="collapsed", disabled=not me,
                       placeholder="Note (N), Enter saves", on_change=on_note, args=(note_key,),
                       max_chars=config().note_max_chars)
    auto = bool(st.session_state.get(AUTO, False))
    cols[7].toggle("Auto-next", value=auto, key=f"dr_auto_{int(auto)}", on_change=flip_auto,
                   help="Auto-advance: after Approve or Reject, go to the next prompt (A)")


def lineage_bar(family: Lineage, is_image: bool) -> None:
    """What made the focused image, its parents and children; compare with the parent; Variations."""
    line, parent, vary = st.columns([6, 1.4, 1.2], vertical_alignment="center")
    with line:
        small(family.describe())
    parent.button("Compare with parent", icon=":material/compare:", disabled=not family.parents, key="dr_compare_parent",
                  on_click=act, args=({"a": "compare_parent"},), help="Compare this image with its parent (O)", width="stretch")
    role = st.session_state.get("role", Role.admin)
    may = allowed(role, "launch")
    vary.button("Variations", icon=":material/auto_awesome:", disabled=not is_image or not may, key="dr_variations",
                on_click=act, args=({"a": "variations"},), width="stretch",
                help="New images from this one, as their subject reference (V)" if may else refusal(role, "launch"))
    wanted = st.session_state.get(VARIATIONS_FOR)
    if wanted == family.iteration_id and is_image and may:
        variations_dialog(family.iteration_id)
    elif wanted is not None:
        st.session_state.pop(VARIATIONS_FOR, None)


@st.dialog("Variations")
def variations_dialog(iteration_id: int) -> None:
    st.text(f"New images from image {iteration_id}: it is their subject reference. They run in the background like any run "
            "and appear as its children.")
    n = st.number_input("How many", 1, grid_settings(settings).max_images, 4, key="dr_variations_n")
    instruction = st.text_input("Instruction (optional)", placeholder="same person, smiling", key="dr_variations_text")
    go_on, cancel = st.columns(2)
    if cancel.button("Cancel", width="stretch"):
        st.session_state.pop(VARIATIONS_FOR, None)
        st.rerun()
    if go_on.button("Make variations", type="primary", width="stretch"):
        try:
            run_id = launch_variations(engine, settings, iteration_id, n=int(n), instruction=instruction)
        except DarkroomError as e:
            st.error("No variations were made:")
            st.text(str(e))
            return
        st.session_state["runner"].wake()
        st.session_state.pop(VARIATIONS_FOR, None)
        st.session_state.setdefault("review_notices", []).append(f"Run {run_id}: {int(n)} variation(s) of image {iteration_id} queued.")
        st.rerun()


def page() -> None:
    apply_pending(DESK, apply)
    follow("review")
    compact()
    cfg, me = config(), reviewer()
    for message in st.session_state.pop("review_notices", []):
        st.toast(message)
    view = read_view()
    with session(engine) as s:
        pos = review_position(s, view.filter, view.item, sort=view.sort, reviewer=me, rule=cfg.decision_rule,
                              disputed_star_spread=cfg.disputed_star_spread)
        if view.item is None:
            if pos.first_item is None:
                st.info("Nothing to review: no image matches this selection.")
                st.button("Back to the grid", icon=":material/grid_view:", on_click=act, args=({"a": "grid"},))
                return
            view = view.open(pos.first_item, 1, "review")
            write_view(view)
            pos = review_position(s, view.filter, view.item, sort=view.sort, reviewer=me, rule=cfg.decision_rule,
                                  disputed_star_spread=cfg.disputed_star_spread)
        try:
            d = prompt_detail(s, view.item, me)
        except InputError as e:
            st.error("This link does not open a prompt.")
            st.text(str(e))
            st.button("Back to the grid", icon=":material/grid_view:", on_click=act, args=({"a": "grid"},))
            return
        numbers = [v.iteration.number for v in d.iterations]
        focus = view.focus if view.focus in numbers else (numbers[0] if numbers else 1)
        ids = [v.iteration.id for v in d.iterations]
        sums = summaries(s, ids, me, cfg.decision_rule)
        histories = {i: [h.text + f" · {h.at:%Y-%m-%d %H:%M}" for h in history(s, i, 30)] for i in ids}
        undo = last_undoable(s, me) if me else None
        iterations = [_iteration_data(s, v, sums.get(v.iteration.id), histories[v.iteration.id], d.item.final_iteration)
                      for v in d.iterations]
        compare = _compare(s, view, d)
        prefetch = _prefetch(s, [pos.next_item, pos.prev_item])
        focused = next((v.iteration for v in d.iterations if v.iteration.number == focus), None)
        family = lineage_of(s, focused.id) if focused is not None and focused.id is not None else None

    header(d, pos)
    if not me:
        st.warning("Enter your name in the sidebar to rate, approve or reject: keys and buttons wait until then.")
    focus_view = next((v for v in d.iterations if v.iteration.number == focus), None)
    if focus_view is not None:
        controls(d, focus_view, sums.get(focus_view.iteration.id), undo.label if undo else None)
    if family is not None:
        lineage_bar(family, bool(focus_view is not None and focus_view.is_image))
    review_desk({
        "item": d.item.id, "enabled": bool(me), "focus": focus, "iterations": iterations, "prefetch": prefetch,
        "candidates": compare.get("candidates", []), "compare": {"pair": compare["pair"], "candidates": compare["candidates"]}
        if "pair" in compare else None, "help": KEYS, "note_label": NOTE_LABEL, "reserve": 12,
    }, key=DESK, on_actions=apply)
    if d.item.error_message:
        st.error("This prompt ended with an error:")
        st.code(f"{d.item.error_kind}: {d.item.error_message}", language=None, wrap_lines=True)
    if d.item.stop_reason:  # why the prompt stopped where it did (plain text, fixed wording)
        st.caption(f"Stopped: {display.stop_reason(d.item.stop_reason)}")
    small(f"Run {d.run.id} ({d.run.name}) · decision in force: {cfg.decision_rule} rule · selection: {view.filter.describe()}")


page()
