"""Prompt sets in, runs out: the checks and the launch New run and ``python -m pipeline run`` make.

A JSON body's prompt set goes through the same reader as an uploaded file
(:func:`pipeline.prompts.bundle.load_upload`), so a problem carries the same JSON path the CLI
prints; a multipart upload may be a zip bundle with its images, with the bundle's checks (path
traversal, links, bombs, non-images, size and file caps).
"""

from __future__ import annotations

import json
from typing import IO, Any

from pipeline.api.context import ApiContext
from pipeline.api.schemas import RunOptions, config_from
from pipeline.config import Settings
from pipeline.prompts.analysis import PromptAnalysis
from pipeline.prompts.bundle import ZIP_MAGIC, BundleLimits, load_upload, load_zip
from pipeline.prompts.promptset import Limits, PromptSetSpec
from pipeline.runs import control
from pipeline.runs.prompt_check import check_prompt_set
from pipeline.runs.records import RunConfig, RunSummary


def default_config(settings: Settings) -> RunConfig:
    r = settings.run
    return RunConfig(providers=list(r.providers), judge=r.judge, refiner=r.refiner, iterations=r.iterations, concurrency=r.concurrency,
                     routing=r.routing, block_rewrites=r.block_rewrites)  # as `python -m pipeline run` without options


def spec_from_document(settings: Settings, doc: Any, source: str = "prompt_set") -> PromptSetSpec:
    """A prompt set sent inside a JSON body: read exactly as an uploaded JSON file is."""
    raw = json.dumps(doc, ensure_ascii=True).encode()  # ASCII: a lone surrogate survives to be refused with its path
    return load_upload(raw, source, Limits.from_settings(settings), BundleLimits.from_settings(settings))


def spec_from_upload(settings: Settings, upload: IO[bytes], name: str) -> PromptSetSpec:
    """An uploaded file: a zip bundle (read from the spooled file, never whole in memory) or JSON."""
    limits, bundle = Limits.from_settings(settings), BundleLimits.from_settings(settings)
    head = upload.read(len(ZIP_MAGIC))
    upload.seek(0)
    if head == ZIP_MAGIC:
        return load_zip(upload, name, limits, bundle)
    return load_upload(upload.read(limits.max_bytes + 1), name, limits, bundle)


def run_config(ctx: ApiContext, options: RunOptions) -> RunConfig:
    config = config_from(options, default_config(ctx.settings))
    config.validate(ctx.settings)
    return config


def check(ctx: ApiContext, spec: PromptSetSpec, options: RunOptions) -> tuple[RunConfig, list[PromptAnalysis]]:
    """The checks ``python -m pipeline run`` makes before it writes anything; the prompts' analyses."""
    config = run_config(ctx, options)
    control.check_components(config)
    analyses = check_prompt_set(ctx.settings, spec, config.providers)  # a prompt over a provider's maximum: refused
    control.check_launch(ctx.settings, config, None, spec)
    control.check_run_name(options.name)
    return config, analyses


def launch(ctx: ApiContext, spec: PromptSetSpec, options: RunOptions) -> RunSummary:
    """Queue the run for the background runner (the dashboard's, or this server's) and wake it."""
    config, _ = check(ctx, spec, options)
    run_id = control.launch(ctx.engine, ctx.settings, spec, config, name=options.name, project=options.project)
    ctx.wake_runner()
    return control.summary(ctx.engine, run_id)
