"""What the gallery shows: filtered, paginated image cards, and one prompt's iterations in detail.

Filtering, sorting and paging happen in SQL (one count and one page query, thumbnails and the
ratings summed up per image joined in), so a page costs the same on page 1 and page 80. Stars
are the mean over every reviewer; the decision in force follows the configured rule
(:mod:`pipeline.review.decisions`, the same as the export), so no reviewer's rating masks another's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import String, and_, case, cast, false, func, or_, true
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.review.decisions import consensus_query
from pipeline.review.steps import step_before
from pipeline.review.textdiff import Part
from pipeline.runs.records import get_run, output_dir_of
from pipeline.store.models import (
    MAX_ROW_ID,
    Evaluation,
    Iteration,
    Prompt,
    PromptElement,
    Rating,
    Refinement,
    Run,
    RunItem,
    Thumbnail,
    row_id,
)
from pipeline.store.objects import ObjectStore, run_store

UNRATED = 0  # the "stars" filter value for iterations nobody has starred
SORTS = {"newest": "Newest run", "score": "Judge score", "stars": "Stars (mean)", "prompt": "Prompt id", "delta": "Score change"}
SORT_DESCENDING = {"newest": True, "score": True, "stars": True, "prompt": False, "delta": True}  # each sort's natural direction


@dataclass(frozen=True)
class Sort:
    key: str = "newest"  # a key of SORTS
    descending: bool = True  # applies to the key; ties always go run (newest first), prompt order, iteration, id

    def validate(self) -> None:
        if self.key not in SORTS:
            raise InputError(f"sort {self.key!r} is not one of {', '.join(SORTS)}")


NEWEST = Sort()  # the default order: newest run first, prompts in set order, iterations in order


@dataclass(frozen=True)
class GalleryFilter:
    run_ids: tuple[int, ...] = ()  # empty = every run
    project_ids: tuple[int, ...] = ()  # only the runs of these projects (empty = every project)
    statuses: tuple[str, ...] = ()  # the prompt's status in its run
    score_min: float = 0.0
    score_max: float = 10.0  # a range narrower than 0–10 leaves out images not yet judged
    stars: tuple[int, ...] = ()  # 1–5 (the reviewers' mean, rounded), or UNRATED (nobody starred it)
    decisions: tuple[str, ...] = ()  # the decision in force: approved | rejected | none
    providers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # any of them
    text: str = ""  # in the prompt sent, the original prompt, its title or id
    best_only: bool = False  # only each prompt's best iteration
    unreviewed: bool = False  # not yet starred or decided by the reviewer the query is made for
    disputed: bool = False  # reviewers disagree: approved and rejected, or stars far apart
    approved_by: int = 0  # approved by at least this many reviewers (0 = any)

    def validate(self) -> None:
        if not 0 <= self.score_min <= self.score_max <= 10:
            raise InputError(f"score range {self.score_min}–{self.score_max} must lie within 0–10, low end first")
        bad = [s for s in self.stars if s not in (UNRATED, 1, 2, 3, 4, 5)]
        if bad:
            raise InputError(f"stars filter: {bad} are not 1–5 (or 0 for unrated)")
        if self.approved_by < 0:
            raise InputError(f"approved by: {self.approved_by} is not 0 or more")

    def describe(self) -> str:
        """The filter in words, for a confirmation or an export's name: ``run 3 · score 7–10 · best only``."""
        parts = [f"run{'s' if len(self.run_ids) > 1 else ''} {', '.join(map(str, self.run_ids))}" if self.run_ids else "every run"]
        if self.project_ids:
            parts.append(f"project{'s' if len(self.project_ids) > 1 else ''} #{', #'.join(map(str, self.project_ids))}")
        if self.statuses:
            parts.append("prompt " + "/".join(self.statuses))
        if (self.score_min, self.score_max) != (0.0, 10.0):
            parts.append(f"score {self.score_min:g}–{self.score_max:g}")
        if self.stars:
            parts.append("stars " + "/".join("none" if s == UNRATED else str(s) for s in self.stars))
        if self.decisions:
            parts.append("decision " + "/".join(self.decisions))
        if self.providers:
            parts.append("provider " + "/".join(self.providers))
        if self.tags:
            parts.append("tag " + "/".join(self.tags))
        if self.text.strip():
            parts.append(f"text “{self.text.strip()[:40]}”")
        if self.best_only:
            parts.append("best only")
        if self.unreviewed:
            parts.append("not yet reviewed by me")
        if self.disputed:
            parts.append("disputed")
        if self.approved_by:
            parts.append(f"approved by ≥{self.approved_by}")
        return " · ".join(parts)


@dataclass(frozen=True)
class Card:
    iteration_id: int
    run_item_id: int
    run_id: int
    prompt_key: str
    title: str
    number: int
    provider: str
    score: float | None
    stars: int | None  # the reviewers' mean, rounded (for star icons); mean_stars has it exactly
    decision: str  # in force, under the rule the page was asked with
    is_best: bool
    item_status: str
    thumb: bytes | None
    thumb_mime: str
    mean_stars: float | None = None
    star_count: int = 0
    approvals: int = 0
    rejections: int = 0
    needs_tiebreak: bool = False
    disputed: bool = False
    my_stars: int | None = None
    my_decision: str = "none"
    score_delta: float | None = None  # change in judge score from the previous iteration of the prompt


@dataclass(frozen=True)
class GalleryPage:
    cards: list[Card]
    total: int  # images matching the filter
    page: int  # 1-based, clamped to the pages there are
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass(frozen=True)
class _Parts:
    """The tables and expressions one gallery statement is built from."""

    consensus: Any
    mine: Any
    prev_ev: Any
    decision: Any
    delta: Any


def _parts(reviewer: str, rule: str, disputed_star_spread: int) -> _Parts:
    consensus = consensus_query(rule, disputed_star_spread)
    mine = aliased(Rating, name="mine")
    prev_ev = aliased(Evaluation, name="prev_ev")
    return _Parts(consensus, mine, prev_ev, func.coalesce(consensus.c.decision, "none"),
                  Evaluation.overall_score - prev_ev.overall_score)


def _conditions(f: GalleryFilter, p: _Parts, reviewer: str) -> list[Any]:
    """The filter as SQL conditions (besides ``status == ok``)."""
    c = p.consensus
    conds: list[Any] = []
    if f.run_ids:
        conds.append(col(RunItem.run_id).in_(f.run_ids))
    if f.project_ids:
        conds.append(col(RunItem.run_id).in_(select(Run.id).where(col(Run.project_id).in_(f.project_ids))))
    if f.statuses:
        conds.append(col(RunItem.status).in_(f.statuses))
    if (f.score_min, f.score_max) != (0.0, 10.0):
        conds.append(and_(col(Evaluation.overall_score) >= f.score_min, col(Evaluation.overall_score) <= f.score_max))
    if f.stars:
        rated = [s for s in f.stars if s != UNRATED]
        conds.append(or_(*(and_(c.c.mean_stars >= s - 0.5, c.c.mean_stars < s + 0.5) for s in rated),
                         func.coalesce(c.c.star_count, 0) == 0 if UNRATED in f.stars else false()))
    if f.decisions:
        conds.append(p.decision.in_(f.decisions))
    if f.providers:
        conds.append(col(Iteration.provider).in_(f.providers))
    if f.tags:
        tags_text = cast(Prompt.tags, String)
        conds.append(or_(*(tags_text.contains(json.dumps(t), autoescape=True) for t in f.tags)))
    if f.text.strip():
        needle = f.text.strip().lower()
        conds.append(or_(*(func.lower(x).contains(needle, autoescape=True)
                           for x in (Iteration.prompt_text, Prompt.prompt, Prompt.title, Prompt.key))))
    if f.best_only:
        conds.append(Iteration.number == RunItem.final_iteration)
    if f.unreviewed:  # with no reviewer named, nothing is "mine": every image counts as not reviewed
        conds.append(or_(p.mine.id.is_(None), and_(p.mine.stars.is_(None), p.mine.decision == "none")))
    if f.disputed:
        conds.append(c.c.disputed == 1)
    if f.approved_by > 0:
        conds.append(func.coalesce(c.c.approvals, 0) >= f.approved_by)
    return conds


def _needs(f: GalleryFilter, sort: Sort | None) -> tuple[bool, bool]:
    """Whether the filter or sort reads the ratings summed up / my rating (else those joins are left out)."""
    consensus = bool(f.stars or f.decisions or f.disputed or f.approved_by) or (sort is not None and sort.key == "stars")
    return consensus, f.unreviewed


def _from(q: Any, p: _Parts, reviewer: str, *, delta: bool, consensus: bool = True, mine: bool = True) -> Any:
    """Join what a card, a filter or a sort may read (outer joins: an unrated image is still an image).

    Summing up the ratings is the dearest part of a count; it is joined only where it is read.
    """
    q = (
        q.select_from(Iteration)
        .join(RunItem, RunItem.id == Iteration.run_item_id)
        .join(Prompt, Prompt.id == RunItem.prompt_id)
        .join(Evaluation, Evaluation.iteration_id == Iteration.id, isouter=True)
    )
    if consensus:
        q = q.join(p.consensus, p.consensus.c.iteration_id == Iteration.id, isouter=True)
    if mine:
        q = q.join(p.mine, and_(p.mine.iteration_id == Iteration.id, p.mine.reviewer == reviewer.strip()), isouter=True)
    if delta:
        prev = aliased(Iteration, name="prev")
        q = (q.join(prev, and_(col(prev.run_item_id) == col(Iteration.run_item_id), col(prev.number) == col(Iteration.number) - 1),
                    isouter=True)
             .join(p.prev_ev, p.prev_ev.iteration_id == prev.id, isouter=True))
    return q


def sort_order(sort: Sort, p: _Parts) -> list[Any]:
    """ORDER BY for a sort: the key (empty values last either way), then a fixed, total tie-break."""
    sort.validate()
    key = {"newest": RunItem.run_id, "score": Evaluation.overall_score, "stars": p.consensus.c.mean_stars,
           "prompt": Prompt.key, "delta": p.delta}[sort.key]
    first = [key.is_(None)] if sort.key in ("score", "stars", "delta") else []
    return [*first, key.desc() if sort.descending else key.asc(),
            col(RunItem.run_id).desc(), Prompt.position, Iteration.number, Iteration.id]


def filtered_query(f: GalleryFilter, columns, *, reviewer: str = "", rule: str = "latest", disputed_star_spread: int = 2,  # type: ignore[no-untyped-def]
                   delta: bool = True, ratings: bool = True, sort: Sort | None = None):
    """The filtered selection of ``columns(parts)``: one statement for count and page alike.

    ``ratings=False`` when ``columns`` read neither ``parts.consensus`` nor ``parts.mine`` (a count, a list of ids).
    """
    p = _parts(reviewer, rule, disputed_star_spread)
    consensus, mine = _needs(f, sort)
    q = _from(select(*columns(p)), p, reviewer, delta=delta, consensus=ratings or consensus, mine=ratings or mine)
    q = q.where(Iteration.status == "ok", col(Iteration.image_path) != "")  # a pruned image has no picture left to show
    conds = _conditions(f, p, reviewer)
    return (q.where(*conds) if conds else q), p


def gallery_page(s: Session, f: GalleryFilter, page: int = 1, per_page: int = 24, *, sort: Sort = Sort(), reviewer: str = "",
                 rule: str = "latest", disputed_star_spread: int = 2) -> GalleryPage:
    """Page ``page`` (1-based, clamped) of the images matching ``f`` in ``sort`` order: two queries, thumbnails joined."""
    f.validate()
    sort.validate()
    per_page = max(1, int(per_page))
    opts: dict[str, Any] = {"reviewer": reviewer, "rule": rule, "disputed_star_spread": disputed_star_spread}
    count_q, _ = filtered_query(f, lambda p: [func.count(col(Iteration.id))], delta=False, ratings=False, **opts)
    total = s.exec(count_q).one()
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, int(page)), pages)
    def columns(p: _Parts) -> list[Any]:
        return [
            col(Iteration.id).label("iteration_id"), col(Iteration.run_item_id).label("run_item_id"),
            col(RunItem.run_id).label("run_id"), col(Prompt.key).label("prompt_key"), col(Prompt.title).label("title"),
            col(Iteration.number).label("number"), col(Iteration.provider).label("provider"),
            col(Evaluation.overall_score).label("score"), p.decision.label("decision"),
            col(RunItem.final_iteration).label("final_iteration"), col(RunItem.status).label("item_status"),
            p.consensus.c.mean_stars, p.consensus.c.star_count, p.consensus.c.approvals, p.consensus.c.rejections,
            p.consensus.c.needs_tiebreak, p.consensus.c.disputed, p.mine.stars.label("my_stars"), p.mine.decision.label("my_decision"),
            p.delta.label("score_delta"), func.row_number().over(order_by=sort_order(sort, p)).label("pos"),
        ]

    # Sort and cut the page without the thumbnails, then join the page's thumbnails only: sorting
    # 2,000 rows that carry 10 KB blobs costs ten times more than sorting their ids.
    q, p = filtered_query(f, columns, **opts)
    cut = q.order_by(*sort_order(sort, p)).limit(per_page).offset((page - 1) * per_page).subquery("page")
    rows: Sequence[Any] = s.exec(select(cut, Thumbnail.data, Thumbnail.mime_type).join(Thumbnail, Thumbnail.iteration_id == cut.c.iteration_id,
                                                                         isouter=True).order_by(cut.c.pos)).all()
    cards = [
        Card(iteration_id=r.iteration_id, run_item_id=r.run_item_id, run_id=r.run_id, prompt_key=r.prompt_key, title=r.title,
             number=r.number, provider=r.provider, score=r.score, stars=_rounded(r.mean_stars), decision=r.decision,
             is_best=r.final_iteration == r.number, item_status=r.item_status, thumb=r.data, thumb_mime=r.mime_type or "",
             mean_stars=None if r.mean_stars is None else float(r.mean_stars), star_count=r.star_count or 0,
             approvals=r.approvals or 0, rejections=r.rejections or 0, needs_tiebreak=bool(r.needs_tiebreak),
             disputed=bool(r.disputed), my_stars=r.my_stars, my_decision=r.my_decision or "none", score_delta=r.score_delta)
        for r in rows
    ]
    return GalleryPage(cards, total, page, per_page)


def _rounded(mean: float | None) -> int | None:
    """Half up, like the stars filter's ranges (4.5 shows as 5 stars)."""
    return None if mean is None else min(5, max(1, math.floor(float(mean) + 0.5)))


def selection_iteration_ids(s: Session, f: GalleryFilter, *, sort: Sort = Sort(), reviewer: str = "", rule: str = "latest",
                            disputed_star_spread: int = 2) -> list[int]:
    """Every image matching ``f``, in grid order (for a bulk action or an export of exactly this selection)."""
    f.validate()
    q, p = filtered_query(f, lambda p: [Iteration.id], reviewer=reviewer, rule=rule, disputed_star_spread=disputed_star_spread,
                          delta=sort.key == "delta", ratings=False, sort=sort)
    return list(s.exec(q.order_by(*sort_order(sort, p))).all())


@dataclass(frozen=True)
class Position:
    """Where the open prompt sits in the current selection and sort, for "n of N" and ←/→."""

    index: int | None  # 1-based; None when the open prompt no longer matches the filter (e.g. just reviewed)
    total: int  # prompts in the selection
    prev_item: int | None  # run_item ids of the neighbours (None at either end)
    next_item: int | None
    first_item: int | None


def review_position(s: Session, f: GalleryFilter, item_id: int | None, *, sort: Sort = Sort(), reviewer: str = "",
                    rule: str = "latest", disputed_star_spread: int = 2) -> Position:
    """One query: the selection's prompts in the order of their first card in the grid, and the open one's place.

    The open prompt keeps its place after a decision takes it out of the filter ("not yet reviewed
    by me"), so → still goes to the prompt that followed it.
    """
    f.validate()
    if item_id is not None and not 0 < item_id <= MAX_ROW_ID:
        item_id = None  # no row can have that id (and the database could not even compare it)
    p = _parts(reviewer, rule, disputed_star_spread)
    conds = _conditions(f, p, reviewer)
    needs_consensus, needs_mine = _needs(f, sort)
    matches = and_(*conds) if conds else true()
    current = col(RunItem.id) == (item_id if item_id is not None else -1)
    ranked = _from(select(col(RunItem.id).label("item"), case((matches, 1), else_=0).label("m"),
                          func.row_number().over(order_by=sort_order(sort, p)).label("rn")), p, reviewer, delta=sort.key == "delta",
                   consensus=needs_consensus, mine=needs_mine)
    ranked = ranked.where(col(Iteration.status) == "ok", or_(matches, current)).subquery("ranked")
    first = func.coalesce(func.min(case((ranked.c.m == 1, ranked.c.rn))), func.min(ranked.c.rn))
    rows = s.exec(select(ranked.c.item, func.max(ranked.c.m)).group_by(ranked.c.item).order_by(first)).all()
    items = [int(i) for i, _ in rows]
    selected = [int(i) for i, m in rows if m]
    total = len(selected)
    head = selected[0] if selected else None
    if item_id is None or item_id not in items:
        return Position(None, total, None, head, head)
    at = items.index(item_id)
    before, after = items[:at], items[at + 1:]
    index = selected.index(item_id) + 1 if item_id in selected else None
    return Position(index, total, before[-1] if before else None, after[0] if after else None, head)


@dataclass(frozen=True)
class FilterOptions:
    runs: list[tuple[int, str]]  # (id, name), newest first
    providers: list[str]
    tags: list[str]


def filter_options(s: Session) -> FilterOptions:
    runs = [(row_id(r), r.name) for r in s.exec(select(Run).order_by(col(Run.id).desc()))]
    providers = sorted(p for p in s.exec(select(Iteration.provider).distinct()).all() if p)
    # no DISTINCT: PostgreSQL has no equality for a json column; the set below removes the repeats
    tag_lists = s.exec(select(Prompt.tags).where(col(Prompt.id).in_(select(RunItem.prompt_id)))).all()
    tags = sorted({t for tags in tag_lists for t in (tags or [])})
    return FilterOptions(runs, providers, tags)


# ---- One prompt in detail ------------------------------------------------------------------------
@dataclass(frozen=True)
class IterationView:
    iteration: Iteration
    evaluation: Evaluation | None
    thumb: bytes | None
    diff: list[Part] | None  # from the previous iteration's prompt; None for the first
    rationale: str  # the refiner's reason for this iteration's prompt
    score_delta: float | None  # change in overall score from the previous iteration
    ratings: list[Rating]  # every reviewer's
    mine: Rating | None  # the current reviewer's

    @property
    def is_image(self) -> bool:
        return self.iteration.status == "ok"


@dataclass(frozen=True)
class PromptDetail:
    run: Run
    item: RunItem
    prompt: Prompt
    elements: list[PromptElement]
    iterations: list[IterationView] = field(default_factory=list)


def prompt_detail(s: Session, run_item_id: int, reviewer: str = "") -> PromptDetail:
    item = s.get(RunItem, run_item_id)
    if item is None:
        raise InputError(f"no prompt {run_item_id} in any run")
    prompt, run = s.get(Prompt, item.prompt_id), get_run(s, item.run_id)
    if prompt is None:  # the foreign key forbids it; a damaged database could still say so
        raise InputError(f"prompt {run_item_id} of run {item.run_id} names prompt {item.prompt_id}, which is not stored")
    rows = s.exec(
        select(Iteration, Evaluation, Thumbnail.data)
        .join(Evaluation, col(Evaluation.iteration_id) == Iteration.id, isouter=True)
        .join(Thumbnail, col(Thumbnail.iteration_id) == Iteration.id, isouter=True)
        .where(Iteration.run_item_id == run_item_id).order_by(col(Iteration.number))
    ).all()
    ids = [it.id for it, _, _ in rows]
    ratings: dict[int, list[Rating]] = {}
    said = or_(col(Rating.stars).is_not(None), col(Rating.decision) != "none", col(Rating.note) != "")  # cleared rows say nothing
    for r in s.exec(select(Rating).where(col(Rating.iteration_id).in_(ids), said).order_by(col(Rating.rated_at).desc())):
        ratings.setdefault(r.iteration_id, []).append(r)
    refinements = {r.from_iteration: r for r in s.exec(select(Refinement).where(Refinement.run_item_id == run_item_id))}
    elements = list(s.exec(select(PromptElement).where(PromptElement.prompt_id == prompt.id).order_by(col(PromptElement.number))))
    views: list[IterationView] = []
    previous: tuple[Iteration, Evaluation | None] | None = None
    for it, ev, thumb in rows:
        prev_it, prev_ev = previous if previous else (None, None)
        diff, rationale = step_before(it, prev_it, refinements)  # before iteration 1: the enhancement, if any
        it_ratings = ratings.get(row_id(it), [])
        mine = next((r for r in it_ratings if r.reviewer == reviewer.strip()), None) if reviewer.strip() else None
        views.append(IterationView(
            iteration=it, evaluation=ev, thumb=thumb,
            diff=diff, rationale=rationale,
            score_delta=(ev.overall_score - prev_ev.overall_score) if ev and prev_ev else None,
            ratings=it_ratings, mine=mine,
        ))
        previous = (it, ev)
    return PromptDetail(run=run, item=item, prompt=prompt, elements=elements, iterations=views)


def _image_run(s: Session, iteration_id: int) -> tuple[Iteration, Run]:
    it = s.get(Iteration, iteration_id)
    if it is None or not it.image_path:
        raise InputError(f"iteration {iteration_id} has no image")
    item = s.get(RunItem, it.run_item_id)
    if item is None:  # the foreign key forbids it; a damaged database could still say so
        raise InputError(f"iteration {iteration_id} names prompt {it.run_item_id}, which is not stored")
    return it, get_run(s, item.run_id)


def image_file(s: Session, settings: Settings, iteration_id: int) -> Path:
    """The full-size image of an iteration on disk (for opening on demand); with a bucket configured
    (DARKROOM_STORAGE_URL) the image is not on disk: read it through :func:`image_object`."""
    it, run = _image_run(s, iteration_id)
    return output_dir_of(settings, run) / it.image_path


def image_object(s: Session, settings: Settings, iteration_id: int) -> tuple[ObjectStore, str]:
    """Where the full-size image of an iteration is kept (its run's folder or bucket) and its key there."""
    it, run = _image_run(s, iteration_id)
    return run_store(settings, run, output_dir_of(settings, run)), it.image_path


# ---- The same prompt elsewhere --------------------------------------------------------------------
@dataclass(frozen=True)
class SiblingImage:
    """An image of the same prompt made by another run (another provider, model or settings), for compare."""

    iteration_id: int
    run_id: int
    number: int
    provider: str
    model: str
    mime_type: str
    score: float | None

    @property
    def label(self) -> str:
        score = f" · {self.score:.1f}" if self.score is not None else ""
        return f"Run {self.run_id} · iteration {self.number} · {self.provider}{score}"


def same_prompt_images(s: Session, run_item_id: int, limit: int = 48) -> list[SiblingImage]:
    """Images of the same prompt in other runs, newest run first.

    "The same prompt" is the same id in its set *and* the same text: a set re-imported for another
    provider or model matches, an unrelated set that reuses the id ``scene_001`` does not.
    """
    item = s.get(RunItem, run_item_id)
    prompt = s.get(Prompt, item.prompt_id) if item is not None else None
    if item is None or prompt is None:
        return []
    rows = s.exec(
        select(Iteration, RunItem.run_id, Evaluation.overall_score)
        .join(RunItem, col(RunItem.id) == Iteration.run_item_id)
        .join(Prompt, col(Prompt.id) == RunItem.prompt_id)
        .join(Evaluation, col(Evaluation.iteration_id) == Iteration.id, isouter=True)
        .where(Prompt.key == prompt.key, Prompt.prompt == prompt.prompt, col(RunItem.id) != run_item_id,
               Iteration.status == "ok")
        .order_by(col(RunItem.run_id).desc(), col(Iteration.number))
        .limit(limit)
    ).all()
    return [SiblingImage(iteration_id=row_id(it), run_id=run_id, number=it.number, provider=it.provider, model=it.model,
                         mime_type=it.mime_type or "image/jpeg", score=score) for it, run_id, score in rows]


def item_images(s: Session, run_item_ids: Sequence[int]) -> list[tuple[int, str]]:
    """(iteration id, mime type) of every image of these prompts, in order: what Review prefetches
    for the neighbouring prompts (one query, not a whole :func:`prompt_detail` each)."""
    if not run_item_ids:
        return []
    rows = s.exec(select(Iteration.id, Iteration.mime_type, Iteration.run_item_id)
                  .where(col(Iteration.run_item_id).in_(list(run_item_ids)), Iteration.status == "ok", col(Iteration.image_path) != "")
                  .order_by(col(Iteration.run_item_id), col(Iteration.number))).all()
    order = {item: n for n, item in enumerate(run_item_ids)}
    return [(int(i), mime or "image/jpeg") for i, mime, item in sorted(rows, key=lambda r: order[r[2]]) if i is not None]
