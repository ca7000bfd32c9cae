"""An image's lineage for the Review view: what made it, its parent images and its children.

Operations (``Iteration.operation``): generate, edit (from reference images), variation (of
another image), grid-cell (a quarter of a 2×2 grid, with its index), refine (from the image judged
before it). Parents and children may be in other runs (a variation run).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import String, cast
from sqlmodel import Session, col, select

from pipeline.store.models import Iteration, RunItem

OPERATION_WORDS = {
    "generate": "generated from the prompt",
    "edit": "edited from the prompt's reference images",
    "variation": "a variation of",
    "grid-cell": "a cell of the grid",
    "refine": "refined from",
}
MAX_CHILDREN = 48


@dataclass(frozen=True)
class Related:
    iteration_id: int
    run_id: int
    number: int
    operation: str
    cell_index: int | None

    @property
    def label(self) -> str:
        cell = f" · cell {self.cell_index}" if self.cell_index else ""
        return f"image {self.iteration_id} (run {self.run_id} · iteration {self.number}{cell})"


@dataclass(frozen=True)
class Lineage:
    iteration_id: int
    operation: str
    cell_index: int | None
    parents: tuple[Related, ...]
    children: tuple[Related, ...]

    def describe(self) -> str:
        """One line: "a cell (2 of 4) of the grid image 41 (...) · children: image 60 (...), …"."""
        words = OPERATION_WORDS.get(self.operation, self.operation)
        if self.operation == "grid-cell" and self.cell_index:
            words = f"cell {self.cell_index} of 4 of the grid"
        line = f"Image {self.iteration_id}: {words}"
        if self.parents:
            line += " " + ", ".join(p.label for p in self.parents)
        if self.children:
            kinds = sorted({c.operation for c in self.children})
            line += f" · {len(self.children)} child image(s) ({', '.join(kinds)}): " + ", ".join(
                f"{c.iteration_id}" + (f" (cell {c.cell_index})" if c.cell_index else "") for c in self.children)
        return line


def _related(s: Session, rows: list[Iteration]) -> tuple[Related, ...]:
    items = {i.id: i.run_id for i in s.exec(select(RunItem).where(col(RunItem.id).in_({r.run_item_id for r in rows})))} if rows else {}
    return tuple(Related(iteration_id=r.id or 0, run_id=items.get(r.run_item_id, 0), number=r.number, operation=r.operation,
                         cell_index=r.cell_index) for r in rows)


def lineage_of(s: Session, iteration_id: int) -> Lineage | None:
    """The lineage of image ``iteration_id`` (None when there is no such image)."""
    it = s.get(Iteration, iteration_id)
    if it is None:
        return None
    parents = list(s.exec(select(Iteration).where(col(Iteration.id).in_(list(it.parent_ids or [])))))
    # Children name this image among their parents. JSON containment differs between SQLite and
    # PostgreSQL, so candidates are narrowed by text and checked in Python.
    needle = f"%{iteration_id}%"
    candidates = s.exec(select(Iteration).where(col(Iteration.operation) != "generate",
                                                 cast(col(Iteration.parent_ids), String).like(needle))
                        .order_by(col(Iteration.id)).limit(MAX_CHILDREN * 4))
    children = [c for c in candidates if iteration_id in (c.parent_ids or [])][:MAX_CHILDREN]
    return Lineage(iteration_id=iteration_id, operation=it.operation, cell_index=it.cell_index, parents=_related(s, parents),
                   children=_related(s, children))
