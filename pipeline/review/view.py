"""What the Gallery shows, as a typed value that round-trips through the URL's query string.

The filter, sort, page, page size, thumbnail size, open prompt, focused iteration and mode live
in the URL, so back/forward, reload and a pasted link restore the same view, and leaving Review
returns to the same grid page. :func:`encode` writes only what differs from the defaults (short
links); :func:`decode` reads anything a person may type or paste: an unknown key is ignored, a
bad value is dropped or clamped, and it never raises (a huge or non-numeric ``?item=`` included).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from pipeline.review.decisions import THUMB_SIZES, ReviewConfig
from pipeline.review.gallery import SORT_DESCENDING, SORTS, UNRATED, GalleryFilter, Sort
from pipeline.store.models import DECISIONS, ITEM_STATUSES, MAX_ROW_ID

__all__ = ["MODES", "THUMB_SIZES", "PARAMS", "ViewState", "encode", "decode"]

MODES = ("grid", "review", "compare")
MAX_PAGE = 1_000_000
MAX_FOCUS = 9999  # grid cells and further shots of iteration N are numbered N*100 + … (pipeline.runs.shots)
MAX_LIST = 50  # values per list parameter
MAX_VALUE_CHARS = 200
PARAMS = ("proj", "run", "status", "score", "stars", "dec", "prov", "tag", "q", "best", "todo", "disputed", "appr",
          "sort", "dir", "page", "per", "size", "item", "it", "mode", "cmp")
_DIGITS = re.compile(r"[0-9]{1,19}")
_NUMBER = re.compile(r"[0-9]{1,2}(\.[0-9]{1,15})?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DEFAULT = ReviewConfig()


@dataclass(frozen=True)
class ViewState:
    filter: GalleryFilter = field(default_factory=GalleryFilter)
    sort: Sort = field(default_factory=Sort)
    page: int = 1
    per_page: int = _DEFAULT.page_size
    thumb: str = _DEFAULT.thumb_size  # a key of THUMB_SIZES
    item: int | None = None  # the open prompt (run_item id)
    focus: int = 1  # the focused iteration's number within the open prompt
    mode: str = "grid"  # grid | review | compare
    compare: tuple[int, ...] = ()  # up to two iteration ids (any runs or providers of one prompt)

    @property
    def thumb_px(self) -> int:
        return THUMB_SIZES.get(self.thumb, THUMB_SIZES[_DEFAULT.thumb_size])

    def to_grid(self) -> ViewState:
        """Leave Review or Compare: the same filter, sort and page; no prompt open."""
        return dataclasses.replace(self, item=None, focus=1, mode="grid", compare=())

    def open(self, item: int, focus: int = 1, mode: str = "review") -> ViewState:
        return dataclasses.replace(self, item=item, focus=max(1, focus), mode=mode if mode in MODES else "review")

    def with_filter(self, f: GalleryFilter) -> ViewState:
        """A new filter starts at page 1 (page 7 of the old selection means nothing in the new one)."""
        return dataclasses.replace(self, filter=f, page=1)

    def with_sort(self, sort: Sort) -> ViewState:
        return dataclasses.replace(self, sort=sort, page=1)


# ---- encode -------------------------------------------------------------------------------------
def _escape(value: str) -> str:
    return value.replace("%", "%25").replace(",", "%2C")


def _join(values: Any) -> str:
    return ",".join(_escape(str(v)) for v in values)


def _num(x: float) -> str:
    return f"{x:g}" if float(f"{x:g}") == x else repr(float(x))


def encode(view: ViewState, config: ReviewConfig | None = None) -> dict[str, str]:
    """The query parameters for ``view``: strings only, and only those that differ from the defaults."""
    cfg = config or _DEFAULT
    f, out = view.filter, {}
    lists = {"proj": f.project_ids, "run": f.run_ids, "status": f.statuses, "stars": f.stars, "dec": f.decisions, "prov": f.providers, "tag": f.tags}
    out.update({k: _join(v) for k, v in lists.items() if v})
    if (f.score_min, f.score_max) != (0.0, 10.0):
        out["score"] = f"{_num(f.score_min)}-{_num(f.score_max)}"
    if f.text.strip():
        out["q"] = f.text
    for key, on in (("best", f.best_only), ("todo", f.unreviewed), ("disputed", f.disputed)):
        if on:
            out[key] = "1"
    if f.approved_by:
        out["appr"] = str(f.approved_by)
    if view.sort.key != "newest":
        out["sort"] = view.sort.key
    if view.sort.descending != SORT_DESCENDING.get(view.sort.key, True):
        out["dir"] = "desc" if view.sort.descending else "asc"
    if view.page != 1:
        out["page"] = str(view.page)
    if view.per_page != cfg.page_size:
        out["per"] = str(view.per_page)
    if view.thumb != cfg.thumb_size:
        out["size"] = view.thumb
    if view.item is not None:
        out["item"] = str(view.item)
    if view.focus != 1:
        out["it"] = str(view.focus)
    if view.mode != "grid":
        out["mode"] = view.mode
    if view.compare:
        out["cmp"] = _join(view.compare)
    return out


# ---- decode (never raises) ---------------------------------------------------------------------
def _one(params: Mapping[str, Any], key: str) -> str:
    """The parameter's last value as text, capped; "" when absent or unreadable."""
    try:
        raw = params.get(key)
    except Exception:  # noqa: BLE001  (an odd mapping must not break the page)
        return ""
    if isinstance(raw, (list, tuple)):
        raw = raw[-1] if raw else ""
    if raw is None:
        return ""
    text = raw if isinstance(raw, str) else str(raw)
    return text[:4000]


def _items(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(",")[: MAX_LIST * 4]:
        value = _CONTROL.sub("", unquote(part, errors="replace")).strip()
        if value and len(value) <= MAX_VALUE_CHARS and value not in out:
            out.append(value)
        if len(out) == MAX_LIST:
            break
    return out


def _int(text: str, lo: int, hi: int) -> int | None:
    """A plain whole number within lo–hi, else None (signs, exponents, ², huge values: None)."""
    t = text.strip()
    if not _DIGITS.fullmatch(t):
        return None
    n = int(t)
    return n if lo <= n <= hi else None


def _clamped(text: str, lo: int, hi: int, default: int) -> int:
    t = text.strip()
    if not t.isascii() or not t.isdigit():
        return default
    if len(t) > 19:
        return hi
    return min(max(int(t), lo), hi)


def _ids(text: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(n for n in (_int(v, 1, MAX_ROW_ID) for v in _items(text)) if n is not None))


def _flag(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def _score(text: str) -> tuple[float, float]:
    lo_text, sep, hi_text = text.strip().partition("-")
    if not sep or not _NUMBER.fullmatch(lo_text) or not _NUMBER.fullmatch(hi_text):
        return 0.0, 10.0
    lo, hi = (min(max(float(x), 0.0), 10.0) for x in (lo_text, hi_text))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 10.0
    return (lo, hi) if lo <= hi else (hi, lo)


def _filter(params: Mapping[str, Any]) -> GalleryFilter:
    lo, hi = _score(_one(params, "score"))
    stars = tuple(n for n in (_int(v, UNRATED, 5) for v in _items(_one(params, "stars"))) if n is not None)
    text = _CONTROL.sub(" ", _one(params, "q"))[:MAX_VALUE_CHARS]
    return GalleryFilter(
        run_ids=_ids(_one(params, "run")),
        project_ids=_ids(_one(params, "proj")),
        statuses=tuple(v for v in _items(_one(params, "status")) if v in ITEM_STATUSES),
        score_min=lo, score_max=hi, stars=stars,
        decisions=tuple(v for v in _items(_one(params, "dec")) if v in DECISIONS),
        providers=tuple(_items(_one(params, "prov"))),
        tags=tuple(_items(_one(params, "tag"))),
        text=text if text.strip() else "",
        best_only=_flag(_one(params, "best")),
        unreviewed=_flag(_one(params, "todo")),
        disputed=_flag(_one(params, "disputed")),
        approved_by=_clamped(_one(params, "appr"), 0, 99, 0),
    )


def _nearest(n: int | None, sizes: tuple[int, ...], default: int) -> int:
    if n is None:
        return default
    return min(sizes, key=lambda size: (abs(size - n), size))


def decode(params: Mapping[str, Any], config: ReviewConfig | None = None) -> ViewState:
    """The view a query string asks for; whatever cannot be read falls back to its default."""
    cfg = config or _DEFAULT
    try:
        key = _one(params, "sort").strip().lower()
        key = key if key in SORTS else "newest"
        direction = _one(params, "dir").strip().lower()
        descending = {"asc": False, "desc": True}.get(direction, SORT_DESCENDING[key])
        item = _int(_one(params, "item"), 1, MAX_ROW_ID)
        mode = _one(params, "mode").strip().lower()
        compare = _ids(_one(params, "cmp"))[:2]
        mode = mode if mode in MODES else "grid"
        if mode == "review" and item is None or mode == "compare" and item is None and len(compare) < 2:
            mode = "grid"
        thumb = _one(params, "size").strip().lower()
        return ViewState(
            filter=_filter(params),
            sort=Sort(key, descending),
            page=_clamped(_one(params, "page"), 1, MAX_PAGE, 1),
            per_page=_nearest(_clamped(_one(params, "per"), 1, 10_000, 0) or None, cfg.page_sizes, cfg.page_size),
            thumb=thumb if thumb in THUMB_SIZES else cfg.thumb_size,
            item=item,
            focus=_clamped(_one(params, "it"), 1, MAX_FOCUS, 1),
            mode=mode,
            compare=compare,
        )
    except Exception:  # noqa: BLE001  (a link must never break the page: the default view instead)
        return ViewState(per_page=cfg.page_size, thumb=cfg.thumb_size)
