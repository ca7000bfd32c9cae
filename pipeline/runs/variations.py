"""Variations of an image: N new images with the image as their subject reference.

A variation is an ordinary run of a one-prompt set built from the image (its prompt as sent, an
optional instruction such as "same person, smiling", the image itself as a ``subject``
reference, and ``images: N``), launched with :func:`pipeline.runs.control.launch` so it runs in
the background like any run (the dashboard's runner, or the CLI in its own process). Each new
image records ``operation = "variation"`` and the source image as its parent, so it appears as
that image's child in the Gallery, the sidecars and the export manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from sqlalchemy.engine import Engine

from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.images import inspect_image
from pipeline.prompts.promptset import PromptSetSpec, PromptSpec
from pipeline.prompts.references import ReferenceSpec
from pipeline.runs import control
from pipeline.runs.records import RunConfig, get_run, output_dir_of
from pipeline.runs.shots import grid_settings
from pipeline.store.db import session
from pipeline.store.models import Iteration, Project, Prompt, RunItem

MAX_INSTRUCTION_CHARS = 1000


@dataclass(frozen=True)
class VariationSource:
    """The image a variation starts from, read and checked."""

    iteration_id: int
    run_id: int
    prompt_key: str
    prompt_text: str
    negative_prompt: str
    size: str
    data: bytes
    mime_type: str
    config: RunConfig
    project: str | None


def read_source(engine: Engine, settings: Settings, iteration_id: int) -> VariationSource:
    """The image ``iteration_id`` and what its run used, or an :class:`InputError` saying why it cannot be varied."""
    with session(engine) as s:
        it = s.get(Iteration, iteration_id)
        if it is None:
            raise InputError(f"there is no image {iteration_id}", field="image_id")
        if it.status != "ok" or not it.image_path:
            raise InputError(f"image {iteration_id} has no picture to vary (its generation {it.status})", field="image_id")
        item = s.get_one(RunItem, it.run_item_id)
        prompt = s.get_one(Prompt, item.prompt_id)
        run = get_run(s, item.run_id)
        project = s.get(Project, run.project_id) if run.project_id is not None else None
        path = output_dir_of(settings, run) / it.image_path
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"image {iteration_id} cannot be read from {path}: {e.strerror or type(e).__name__}", field="image_id") from None
    info = inspect_image(data, max_pixels=settings.images.max_pixels)
    if info.sha256 != it.sha256:
        raise InputError(f"image {iteration_id} at {path} has changed since it was made (its hash differs)", field="image_id")
    size = f"{it.width}x{it.height}" if it.width and it.height and it.operation != "grid-cell" else (prompt.size or "")
    return VariationSource(iteration_id=iteration_id, run_id=item.run_id, prompt_key=prompt.key, prompt_text=it.prompt_text,
                           negative_prompt=it.negative_prompt, size=size, data=data, mime_type=info.mime_type,
                           config=RunConfig.from_dict(dict(run.config or {})), project=project.name if project else None)


def variation_set(source: VariationSource, n: int, instruction: str) -> PromptSetSpec:
    """The one-prompt set that makes ``n`` variations of ``source``."""
    sha256 = hashlib.sha256(source.data).hexdigest()
    ext = PurePosixPath(f"x.{source.mime_type.split('/')[-1]}").suffix
    reference = ReferenceSpec(path=f"image_{source.iteration_id}{ext}", role="subject", where="variation", mime_type=source.mime_type,
                              sha256=sha256, byte_size=len(source.data), reader=lambda: source.data)
    text = source.prompt_text.rstrip().rstrip(".")
    prompt = PromptSpec(
        id=f"variations_of_{source.iteration_id}", prompt=f"{text}. {instruction}" if instruction else text,
        title="", negative_prompt=source.negative_prompt, size=source.size or None, references=(reference,),
        metadata={"variation_of": source.iteration_id, "images": n, "grid": False, "instruction": instruction},
    )
    digest = hashlib.sha256(json.dumps([source.iteration_id, sha256, n, instruction]).encode()).hexdigest()
    return PromptSetSpec(name=f"Variations of image {source.iteration_id}", prompts=(prompt,), sha256=digest,
                         source=f"variations of image {source.iteration_id} (run {source.run_id}, {source.prompt_key})")


def check_request(settings: Settings, n: int, instruction: str) -> str:
    """``instruction`` cleaned, or an :class:`InputError` for a bad ``n`` or instruction."""
    limit = grid_settings(settings).max_images
    if not 1 <= n <= limit:
        raise InputError(f"{n} is outside 1–{limit}", field="n")
    instruction = " ".join(instruction.split())
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise InputError(f"the instruction is {len(instruction):,} characters, over {MAX_INSTRUCTION_CHARS:,}", field="instruction")
    return instruction


def launch_variations(engine: Engine, settings: Settings, iteration_id: int, *, n: int = 4, instruction: str = "",
                      claim: bool = False) -> int:
    """Queue a run making ``n`` variations of image ``iteration_id`` (one iteration, the source
    run's providers, judge and refiner); return its id. Nothing is written when a check fails."""
    instruction = check_request(settings, n, instruction)
    source = read_source(engine, settings, iteration_id)
    base = source.config
    config = RunConfig(providers=base.providers, judge=base.judge, refiner=base.refiner, judge_fallbacks=base.judge_fallbacks,
                       refiner_fallbacks=base.refiner_fallbacks, iterations=1, concurrency=1, routing=base.routing,
                       block_rewrites=base.block_rewrites, budget_usd=base.budget_usd)
    return control.launch(engine, settings, variation_set(source, n, instruction), config,
                          name=f"Variations of image {iteration_id}", claim=claim, project=source.project)


def add_parser(sub: Any) -> None:
    """``python -m pipeline variations``'s arguments (``sub``: the CLI's subparsers)."""
    parser = sub.add_parser("variations", help="make N new images from an image (it is their subject reference); "
                                               "they are its children in the Gallery")
    parser.add_argument("image_id", type=int, help="the image's id (the Gallery's Review view and export manifests show it)")
    parser.add_argument("--n", type=int, default=4, help="how many variations (default: %(default)s)")
    parser.add_argument("--instruction", default="", help='what to change, e.g. "same person, smiling" (default: none)')
