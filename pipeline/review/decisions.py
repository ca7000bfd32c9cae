"""The decision in force when several reviewers decide on one image, and the [review] settings.

Each reviewer keeps their own decision (``rating`` row); the image *counts as* approved or
rejected by a rule chosen in ``[review] decision_rule``:

- ``latest``: the most recent current decision of any reviewer (a reviewer who clears theirs drops out);
- ``majority``: more approvals than rejections or the reverse; a tie means "needs a tie-break";
- ``unanimous``: every reviewer who decided agrees; any disagreement means "needs a tie-break".

:func:`decide` is the rule in Python (for one image's summary); :func:`consensus_query` is the
same rule in SQL (for the grid, its filters and the export), so a page never loads ratings row
by row. ``tests/test_review_desk.py`` checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Subquery, and_, case, false, func, literal, or_, select
from sqlmodel import col

from pipeline.config import Settings
from pipeline.errors import ConfigError
from pipeline.store.models import Rating

RULES = ("latest", "majority", "unanimous")
THUMB_SIZES = {"s": 120, "m": 160, "l": 240, "xl": 320}  # card image width in px, by the name the URL uses


@dataclass(frozen=True)
class ReviewConfig:
    """The ``[review]`` table of the configuration, typed."""

    decision_rule: str = "latest"
    disputed_star_spread: int = 2
    page_size: int = 48
    page_sizes: tuple[int, ...] = (24, 48, 96, 200)
    thumb_size: str = "s"
    reviewer_max_chars: int = 64
    note_max_chars: int = 4000


def review_config(settings: Settings) -> ReviewConfig:
    """The review settings; a wrong value is a ConfigError naming the key."""
    table: dict[str, Any] = settings.section("review")
    try:
        cfg = ReviewConfig(
            decision_rule=str(table.get("decision_rule", ReviewConfig.decision_rule)),
            disputed_star_spread=int(table.get("disputed_star_spread", ReviewConfig.disputed_star_spread)),
            page_size=int(table.get("page_size", ReviewConfig.page_size)),
            page_sizes=tuple(int(n) for n in table.get("page_sizes", ReviewConfig.page_sizes)),
            thumb_size=str(table.get("thumb_size", ReviewConfig.thumb_size)),
            reviewer_max_chars=int(table.get("reviewer_max_chars", ReviewConfig.reviewer_max_chars)),
            note_max_chars=int(table.get("note_max_chars", ReviewConfig.note_max_chars)),
        )
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[review]: a value has the wrong type ({e})") from None
    if cfg.decision_rule not in RULES:
        raise ConfigError(f"[review] decision_rule = {cfg.decision_rule!r} is not one of {', '.join(RULES)}")
    if not cfg.page_sizes or any(n < 1 or n > 1000 for n in cfg.page_sizes):
        raise ConfigError("[review] page_sizes: give page sizes from 1 to 1000")
    if cfg.page_size not in cfg.page_sizes:
        raise ConfigError(f"[review] page_size = {cfg.page_size} is not one of page_sizes {list(cfg.page_sizes)}")
    if cfg.thumb_size not in THUMB_SIZES:
        raise ConfigError(f"[review] thumb_size = {cfg.thumb_size!r} is not one of {', '.join(THUMB_SIZES)}")
    if cfg.disputed_star_spread < 0 or cfg.reviewer_max_chars < 1 or cfg.note_max_chars < 1:
        raise ConfigError("[review] disputed_star_spread must be 0 or more; reviewer_max_chars and note_max_chars 1 or more")
    return cfg


def check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ConfigError(f"decision rule {rule!r} is not one of {', '.join(RULES)}")
    return rule


@dataclass(frozen=True)
class Vote:
    """One reviewer's current decision on an image; ``at`` is when they made it."""

    reviewer: str
    decision: str  # approved | rejected | none
    at: datetime | None = None


@dataclass(frozen=True)
class InForce:
    decision: str  # approved | rejected | none: what the image counts as
    rule: str
    needs_tiebreak: bool
    approvals: int
    rejections: int

    @property
    def label(self) -> str:
        """``approved (majority 2–1)``, ``needs a tie-break (1–1)``, ``rejected (latest)``, ``no decision``."""
        if self.needs_tiebreak:
            return f"needs a tie-break ({self.approvals}–{self.rejections}, {self.rule})"
        if self.decision == "none":
            return "no decision"
        if self.rule == "latest":
            return f"{self.decision} (latest decision)"
        return f"{self.decision} ({self.rule} {self.approvals}–{self.rejections})"


def decide(votes: Iterable[Vote], rule: str) -> InForce:
    """The decision in force under ``rule`` (the same rule as :func:`consensus_query`)."""
    check_rule(rule)
    decided = [v for v in votes if v.decision in ("approved", "rejected")]
    ups = sum(v.decision == "approved" for v in decided)
    downs = len(decided) - ups
    tie = False
    if not decided:
        decision = "none"
    elif rule == "latest":
        if ups and downs:
            last_up = max((v.at for v in decided if v.decision == "approved" and v.at), default=None)
            last_down = max((v.at for v in decided if v.decision == "rejected" and v.at), default=None)
            decision = "approved" if last_up is not None and (last_down is None or last_up > last_down) else "rejected"
        else:
            decision = "approved" if ups else "rejected"
    elif rule == "majority":
        decision = "approved" if ups > downs else "rejected" if downs > ups else "none"
        tie = ups == downs
    else:  # unanimous
        decision = "approved" if not downs else "rejected" if not ups else "none"
        tie = bool(ups and downs)
    return InForce(decision, rule, tie, ups, downs)


def _live() -> Any:
    """A rating row that says anything (rows cleared back to nothing do not count as a review)."""
    return or_(col(Rating.stars).is_not(None), col(Rating.decision) != "none", col(Rating.note) != "")


def consensus_query(rule: str, disputed_star_spread: int = 2) -> Subquery:
    """Per rated iteration, the ratings summed up: one grouped pass over ``rating``.

    Columns: ``iteration_id, mean_stars, star_count, reviewers, approvals, rejections, decision,
    needs_tiebreak, disputed``. Iterations nobody rated have no row (outer-join and coalesce).
    """
    check_rule(rule)
    approved = col(Rating.decision) == "approved"
    rejected = col(Rating.decision) == "rejected"
    stars, decided_at = col(Rating.stars), col(Rating.decided_at)
    agg = (
        select(
            col(Rating.iteration_id).label("iteration_id"),
            func.avg(stars).label("mean_stars"),
            func.count(stars).label("star_count"),
            func.count().label("reviewers"),
            func.sum(case((approved, 1), else_=0)).label("approvals"),
            func.sum(case((rejected, 1), else_=0)).label("rejections"),
            (func.max(stars) - func.min(stars)).label("spread"),
            func.max(case((approved, decided_at))).label("last_up"),
            func.max(case((rejected, decided_at))).label("last_down"),
        )
        .where(_live())
        .group_by(col(Rating.iteration_id))
        .subquery("rating_agg")
    )
    ups, downs = agg.c.approvals, agg.c.rejections
    tie: ColumnElement[bool]
    if rule == "latest":
        decision = case((and_(ups == 0, downs == 0), literal("none")), (downs == 0, literal("approved")), (ups == 0, literal("rejected")),
                        (and_(agg.c.last_up.is_not(None), or_(agg.c.last_down.is_(None), agg.c.last_up > agg.c.last_down)),
                         literal("approved")), else_=literal("rejected"))
        tie = false()
    elif rule == "majority":
        decision = case((ups > downs, literal("approved")), (downs > ups, literal("rejected")), else_=literal("none"))
        tie = and_(ups == downs, ups > 0)
    else:
        decision = case((and_(ups > 0, downs == 0), literal("approved")), (and_(downs > 0, ups == 0), literal("rejected")),
                        else_=literal("none"))
        tie = and_(ups > 0, downs > 0)
    star_split = and_(literal(disputed_star_spread) > 0, agg.c.spread >= disputed_star_spread) if disputed_star_spread else false()
    disputed = or_(and_(ups > 0, downs > 0), star_split)
    return select(
        agg.c.iteration_id, agg.c.mean_stars, agg.c.star_count, agg.c.reviewers, ups.label("approvals"), downs.label("rejections"),
        decision.label("decision"), case((tie, 1), else_=0).label("needs_tiebreak"), case((disputed, 1), else_=0).label("disputed"),
    ).subquery("consensus")


def is_disputed(votes: Iterable[Vote], stars: Iterable[int | None], disputed_star_spread: int = 2) -> bool:
    """Reviewers disagree: one approved and another rejected, or their stars differ by the spread or more."""
    decisions = {v.decision for v in votes}
    given = [s for s in stars if s is not None]
    return {"approved", "rejected"} <= decisions or bool(
        disputed_star_spread and given and max(given) - min(given) >= disputed_star_spread)
