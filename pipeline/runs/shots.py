"""One step of a prompt when it asks for more than one image: several shots, grids split into cells.

A step (iteration number N) normally makes one image. A prompt may ask for more:

- ``images: K`` (prompt field; variations set it too): K shots, each its own generation with its
  own seed, each judged; the best one's judgement goes to the refiner;
- grid mode (``--grid``, the run's ``grid`` option, or the prompt field ``grid: true``): each shot
  asks for a 2×2 grid (the ``[grid] prompt_suffix`` is added to what is sent) and is split
  into four cells (:mod:`pipeline.grids`), each stored and judged as its own image with the grid
  as its parent and its cell index; ``images: 8`` makes two grids. A response that is not a
  grid is kept whole, judged, and says why in its ``parameters["grid"]``.

Every image is an ``iteration`` row: shot 1 is row N itself, further shots rows N·100 + 10·s,
and the cells of a grid row R are rows R' + 1…4 (R' = R·100 for shot 1, R otherwise). So a
resumed step finds each of its images by number, and nothing is generated or split twice.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings, defaults_from, from_table
from pipeline.errors import Problem, PromptSetInvalid, StepFailed
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.store.models import Evaluation, Iteration, Thumbnail, utcnow
from pipeline.store.statements import append, delete_where, insert_row, table_of, update_row

if TYPE_CHECKING:
    from pipeline.components import Element
    from pipeline.runs.job import PromptJob

CELLS = 4
STEP_BASE = 100  # rows of step N beyond its first: N*100 + 10*shot (+ cell)
SHOT_BASE = 10
ROW_FIELDS = tuple(c.name for c in table_of(Iteration).columns if c.name not in ("id", "run_item_id", "number"))


@defaults_from("grid")
@dataclass(frozen=True)
class GridSettings:
    prompt_suffix: str  # added to what is sent when a grid is wanted
    max_images: int  # images one prompt may ask for per step


def grid_settings(settings: Settings) -> GridSettings:
    return from_table(GridSettings, settings.section("grid"))


@dataclass(frozen=True)
class Plan:
    """What one step of a prompt makes."""

    shots: int = 1
    grid: bool = False

    @property
    def images(self) -> int:
        return self.shots * (CELLS if self.grid else 1)


def plan_problems(meta: dict[str, Any], settings: Settings) -> list[tuple[str, str]]:
    """``(field, what is wrong)`` for a prompt's fields ``grid`` and ``images``."""
    limit = grid_settings(settings).max_images
    problems = []
    grid, images = meta.get("grid", False), meta.get("images")
    if not isinstance(grid, bool):
        problems.append(("grid", f"must be true or false, not {grid!r}"[:200]))
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= limit):
        problems.append(("images", f"must be a whole number 1–{limit}, not {images!r}"[:200]))
    return problems


def check_fields(spec: PromptSetSpec, settings: Settings) -> None:
    """Refuse a prompt set whose ``grid`` or ``images`` fields are bad, naming each by its JSON path."""
    problems = [Problem(f"{p.where or p.id}.{name}", message) for p in spec.prompts for name, message in plan_problems(p.metadata, settings)]
    if problems:
        raise PromptSetInvalid(problems, spec.source)


def plan_for(meta: dict[str, Any], run_grid: bool, settings: Settings) -> Plan:
    """The plan of a prompt from its fields ``grid`` and ``images`` and the run's grid option; a
    bad field (checked at launch, so only a set stored before that check) fails the prompt, naming it."""
    problems = plan_problems(meta, settings)
    if problems:
        raise StepFailed("failed", "input", "; ".join(f"the prompt's field {name} {message}" for name, message in problems))
    grid = meta.get("grid", run_grid)
    images = meta.get("images")
    if images is None:
        return Plan(shots=1, grid=bool(grid))
    return Plan(shots=math.ceil(images / CELLS) if grid else images, grid=bool(grid))


def step_of(number: int) -> int:
    """The step (iteration) an image row belongs to."""
    return number if number < STEP_BASE else number // STEP_BASE


def shot_number(step: int, shot: int) -> int:
    return step if shot == 0 else step * STEP_BASE + shot * SHOT_BASE


def cell_number(grid_number: int, cell: int) -> int:
    return (grid_number * STEP_BASE if grid_number < STEP_BASE else grid_number) + cell


def shot_seed(seed: int, number: int) -> int:
    """Each shot of a step its own seed (the same on a rerun), the first shot the prompt's."""
    shot = 0 if number < STEP_BASE else (number % STEP_BASE) // SHOT_BASE
    return (seed + shot) % 2**32


def sent_text(job: PromptJob, text: str) -> str:
    """What goes to the provider: the prompt, plus the grid request in grid mode."""
    suffix = grid_settings(job.ctx.settings).prompt_suffix
    return f"{text.rstrip()}{suffix}" if job.plan.grid and suffix not in text else text


def lineage(job: PromptJob, number: int) -> tuple[str, list[int]]:
    """The operation that makes image row ``number`` (not a cell) and its parents: step 1 is
    generate, edit (the prompt sends reference images) or variation (of the image it names); a
    later step is refine, from the best judged image of the step before."""
    step = step_of(number)
    if step > 1:
        best = best_of_step(job, step - 1)
        return "refine", [best[0].id] if best is not None and best[0].id is not None else []
    source = job.prompt.meta.get("variation_of") if isinstance(job.prompt.meta, dict) else None
    if isinstance(source, int) and not isinstance(source, bool):
        return "variation", [source]
    return ("edit" if job.references else "generate"), []


def best_of_step(job: PromptJob, step: int) -> tuple[Iteration, Evaluation] | None:
    judged = [(it, job.evaluations[n]) for n, it in job.iterations.items() if step_of(n) == step and n in job.evaluations]
    return max(judged, key=lambda pair: pair[1].overall_score, default=None)


async def run_step(job: PromptJob, number: int, text: str, elements: tuple[Element, ...]) -> tuple[Iteration, Evaluation]:
    """Make, split and judge every image of step ``number``; return the step's first row (what a
    refinement is keyed by) and the best judgement."""
    first: Iteration | None = None
    for shot in range(job.plan.shots):
        it = await job.generated(shot_number(number, shot), text)
        first = first or it
        targets = (await cells_of(job, it) or [it]) if job.plan.grid else [it]
        for target in targets:
            await job.judged(target, elements)
    best = best_of_step(job, number)
    assert first is not None and best is not None  # every shot was generated and judged, or the step raised
    return first, best[1]


async def cells_of(job: PromptJob, grid: Iteration) -> list[Iteration]:
    """The cell rows of ``grid``, split and stored once; [] when the image is not a grid (why is
    kept in its ``parameters["grid"]``)."""
    numbers = [cell_number(grid.number, c) for c in range(1, CELLS + 1)]
    stored = [job.iterations.get(n) for n in numbers]
    if all(c is not None and c.status == "ok" and c.parent_ids == [grid.id] and job._image_intact(c) for c in stored):
        return [c for c in stored if c is not None]  # split before (a resumed step): a missing cell file is cut again
    if (grid.parameters or {}).get("grid", {}).get("split") is False:
        return []
    from pipeline.grids import split_image  # numpy and PIL: loaded by the first grid, not by every page that imports this module

    data = await asyncio.to_thread(job.image_bytes, grid)
    cells = await asyncio.to_thread(split_image, data)
    if not cells.split.is_grid:
        grid.parameters = {**(grid.parameters or {}), "grid": {"split": False, "reason": cells.split.reason}}
        with job.ledger.transaction() as s:
            update_row(s, grid, "parameters")
        job._write_results(grid)
        return []
    rows = await asyncio.to_thread(_store_cells, job, grid, numbers, cells.images, cells.split.cells)
    grid.parameters = {**(grid.parameters or {}), "grid": {"split": True, "cells": [list(b) for b in cells.split.cells]}}
    with job.ledger.transaction() as s:
        update_row(s, grid, "parameters")
        for row, thumb in rows:
            old = job.iterations.get(row.number)
            if old is not None:  # a cell of an earlier grid that was generated again
                row.id = old.id
                update_row(s, row, *ROW_FIELDS)
                for model in (Evaluation, Thumbnail):
                    delete_where(s, model, "iteration_id", row.id)
            else:
                insert_row(s, row)
            append(s, Thumbnail, {"iteration_id": row.id, **thumb})
    for row, _ in rows:
        job.iterations[row.number] = row
        job.evaluations.pop(row.number, None)
        job._write_results(row)
    return [row for row, _ in rows]


def _store_cells(job: PromptJob, grid: Iteration, numbers: list[int], images: tuple[bytes, ...],
                 boxes: tuple[tuple[int, int, int, int], ...]) -> list[tuple[Iteration, dict[str, Any]]]:
    """Write each cell's file and thumbnail (off the event loop); the rows, not yet stored."""
    from pipeline.images import inspect_image  # Pillow: see cells_of

    rows = []
    max_pixels = job.ctx.settings.images.max_pixels
    for index, (number, data, box) in enumerate(zip(numbers, images, boxes, strict=True), start=1):
        info = inspect_image(data, max_pixels=max_pixels)
        path = job.folder / f"iteration_{number}.{info.extension}"
        thumb = job._store_image(path, data, info.sha256)
        row = Iteration(
            run_item_id=grid.run_item_id, number=number, prompt_text=grid.prompt_text, negative_prompt=grid.negative_prompt,
            provider=grid.provider, model=grid.model, seed=grid.seed,
            parameters={"width": info.width, "height": info.height, "box": list(box)}, status="ok",
            image_path=str(path.relative_to(job.ctx.output_dir)), mime_type=info.mime_type, width=info.width, height=info.height,
            sha256=info.sha256, byte_size=info.byte_size, latency_ms=0.0, cost_usd=0.0, started_at=utcnow(), finished_at=utcnow(),
            routing={}, operation="grid-cell", parent_ids=[grid.id or 0], cell_index=index,
        )
        rows.append((row, {"mime_type": thumb.mime_type, "width": thumb.width, "height": thumb.height, "data": thumb.data}))
    return rows

