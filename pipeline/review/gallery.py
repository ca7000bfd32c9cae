"""What the gallery shows: filtered, paginated image cards, and one prompt's iterations in detail.

Filtering and paging happen in SQL (one count and one page query, thumbnails joined in), so a
page costs the same on page 1 and page 80. Ratings in force are each iteration's most recent
one, whoever gave it (the same rule as the export).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import String, cast, false, func, or_
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.review.ratings import latest_ratings_query
from pipeline.review.textdiff import Part, word_diff
from pipeline.runs.records import output_dir_of
from pipeline.store.models import Evaluation, Iteration, Prompt, PromptElement, Rating, Refinement, Run, RunItem, Thumbnail

UNRATED = 0  # the "stars" filter value for iterations nobody has starred


@dataclass(frozen=True)
class GalleryFilter:
    run_ids: tuple[int, ...] = ()  # empty = every run
    statuses: tuple[str, ...] = ()  # the prompt's status in its run
    score_min: float = 0.0
    score_max: float = 10.0  # a range narrower than 0–10 leaves out images not yet judged
    stars: tuple[int, ...] = ()  # 1–5, or UNRATED
    decisions: tuple[str, ...] = ()  # approved | rejected | none
    providers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # any of them
    text: str = ""  # in the prompt sent, the original prompt, its title or id
    best_only: bool = False  # only each prompt's best iteration

    def validate(self) -> None:
        if not 0 <= self.score_min <= self.score_max <= 10:
            raise InputError(f"score range {self.score_min}–{self.score_max} must lie within 0–10, low end first")
        bad = [s for s in self.stars if s not in (UNRATED, 1, 2, 3, 4, 5)]
        if bad:
            raise InputError(f"stars filter: {bad} are not 1–5 (or 0 for unrated)")


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
    stars: int | None
    decision: str
    is_best: bool
    item_status: str
    thumb: bytes | None
    thumb_mime: str


@dataclass(frozen=True)
class GalleryPage:
    cards: list[Card]
    total: int  # images matching the filter
    page: int  # 1-based, clamped to the pages there are
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def _query(f: GalleryFilter, columns):  # type: ignore[no-untyped-def]
    """The filtered selection of ``columns(latest, decision)``: one statement for count and page alike."""
    latest = latest_ratings_query()
    decision = func.coalesce(latest.c.decision, "none")
    q = (
        select(*columns(latest, decision))
        .select_from(Iteration)
        .join(RunItem, RunItem.id == Iteration.run_item_id)
        .join(Prompt, Prompt.id == RunItem.prompt_id)
        .join(Evaluation, Evaluation.iteration_id == Iteration.id, isouter=True)
        .join(latest, latest.c.iteration_id == Iteration.id, isouter=True)
        .where(Iteration.status == "ok")
    )
    if f.run_ids:
        q = q.where(col(RunItem.run_id).in_(f.run_ids))
    if f.statuses:
        q = q.where(col(RunItem.status).in_(f.statuses))
    if (f.score_min, f.score_max) != (0.0, 10.0):
        q = q.where(Evaluation.overall_score >= f.score_min, Evaluation.overall_score <= f.score_max)
    if f.stars:
        rated = [s for s in f.stars if s != UNRATED]
        q = q.where(or_(col(latest.c.stars).in_(rated) if rated else false(),
                        latest.c.stars.is_(None) if UNRATED in f.stars else false()))
    if f.decisions:
        q = q.where(decision.in_(f.decisions))
    if f.providers:
        q = q.where(col(Iteration.provider).in_(f.providers))
    if f.tags:
        tags_text = cast(Prompt.tags, String)
        q = q.where(or_(*(tags_text.contains(json.dumps(t), autoescape=True) for t in f.tags)))
    if f.text.strip():
        needle = f.text.strip().lower()
        q = q.where(or_(*(func.lower(c).contains(needle, autoescape=True)
                          for c in (Iteration.prompt_text, Prompt.prompt, Prompt.title, Prompt.key))))
    if f.best_only:
        q = q.where(Iteration.number == RunItem.final_iteration)
    return q


def gallery_page(s: Session, f: GalleryFilter, page: int = 1, per_page: int = 24) -> GalleryPage:
    """Page ``page`` (1-based, clamped) of the images matching ``f``, newest run first."""
    f.validate()
    total = s.exec(_query(f, lambda latest, decision: [func.count(Iteration.id)])).one()
    pages = max(1, math.ceil(total / per_page))
    page = min(max(1, page), pages)
    q = _query(f, lambda latest, decision: [
        Iteration.id, Iteration.run_item_id, RunItem.run_id, Prompt.key, Prompt.title, Iteration.number, Iteration.provider,
        Evaluation.overall_score, latest.c.stars, decision, RunItem.final_iteration, RunItem.status, Thumbnail.data, Thumbnail.mime_type,
    ])
    rows = s.exec(
        q.join(Thumbnail, Thumbnail.iteration_id == Iteration.id, isouter=True)
        .order_by(col(RunItem.run_id).desc(), Prompt.position, Iteration.number)
        .limit(per_page).offset((page - 1) * per_page)
    ).all()
    cards = [
        Card(iteration_id=r[0], run_item_id=r[1], run_id=r[2], prompt_key=r[3], title=r[4], number=r[5], provider=r[6], score=r[7],
             stars=r[8], decision=r[9], is_best=r[10] == r[5], item_status=r[11], thumb=r[12], thumb_mime=r[13] or "")
        for r in rows
    ]
    return GalleryPage(cards, total, page, per_page)


@dataclass(frozen=True)
class FilterOptions:
    runs: list[tuple[int, str]]  # (id, name), newest first
    providers: list[str]
    tags: list[str]


def filter_options(s: Session) -> FilterOptions:
    runs = [(r.id, r.name) for r in s.exec(select(Run).order_by(col(Run.id).desc()))]
    providers = sorted(p for p in s.exec(select(Iteration.provider).distinct()).all() if p)
    tag_lists = s.exec(select(Prompt.tags).where(col(Prompt.id).in_(select(RunItem.prompt_id))).distinct()).all()
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
    prompt, run = s.get(Prompt, item.prompt_id), s.get(Run, item.run_id)
    rows = s.exec(
        select(Iteration, Evaluation, Thumbnail.data)
        .join(Evaluation, Evaluation.iteration_id == Iteration.id, isouter=True)
        .join(Thumbnail, Thumbnail.iteration_id == Iteration.id, isouter=True)
        .where(Iteration.run_item_id == run_item_id).order_by(Iteration.number)
    ).all()
    ids = [it.id for it, _, _ in rows]
    ratings: dict[int, list[Rating]] = {}
    for r in s.exec(select(Rating).where(col(Rating.iteration_id).in_(ids)).order_by(col(Rating.rated_at).desc())):
        ratings.setdefault(r.iteration_id, []).append(r)
    refinements = {r.from_iteration: r for r in s.exec(select(Refinement).where(Refinement.run_item_id == run_item_id))}
    elements = list(s.exec(select(PromptElement).where(PromptElement.prompt_id == prompt.id).order_by(PromptElement.number)))
    views, previous = [], None
    for it, ev, thumb in rows:
        prev_it, prev_ev = previous if previous else (None, None)
        refinement = refinements.get(prev_it.number) if prev_it else None
        mine = next((r for r in ratings.get(it.id, []) if r.reviewer == reviewer.strip()), None) if reviewer.strip() else None
        views.append(IterationView(
            iteration=it, evaluation=ev, thumb=thumb,
            diff=word_diff(prev_it.prompt_text, it.prompt_text) if prev_it else None,
            rationale=refinement.rationale if refinement else "",
            score_delta=(ev.overall_score - prev_ev.overall_score) if ev and prev_ev else None,
            ratings=ratings.get(it.id, []), mine=mine,
        ))
        previous = (it, ev)
    return PromptDetail(run=run, item=item, prompt=prompt, elements=elements, iterations=views)


def image_file(s: Session, settings: Settings, iteration_id: int) -> Path:
    """The full-size image of an iteration on disk (for opening on demand)."""
    it = s.get(Iteration, iteration_id)
    if it is None or not it.image_path:
        raise InputError(f"iteration {iteration_id} has no image")
    run = s.get(Run, s.get(RunItem, it.run_item_id).run_id)
    return output_dir_of(settings, run) / it.image_path
