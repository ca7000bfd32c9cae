"""The API's request and response bodies, as OpenAPI shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from pipeline.runs.records import RunConfig, RunSummary


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RunOptions(Strict):
    """The options of New run and ``python -m pipeline run``; left out: the configured default."""

    providers: list[str] | None = Field(None, description="ordered provider chain", examples=[["offline"]])
    judges: list[str] | None = Field(None, description="judge, then fallbacks in order")
    refiners: list[str] | None = Field(None, description="refiner, then fallbacks in order")
    routing: Literal["fallback", "pool"] | None = None
    iterations: int | None = Field(None, description="generate+judge rounds per prompt")
    target_score: float | None = Field(None, description="stop refining a prompt once its score reaches this (0–10)")
    concurrency: int | None = Field(None, description="prompts worked on at once")
    block_rewrites: int | None = Field(None, description="times the refiner may rewrite a blocked prompt, 0–3")
    budget_usd: float | None = Field(None, description="spending cap in USD; the run pauses before a call would pass it")
    enhance: bool = Field(False, description="rewrite each prompt before its first image (a prompt with \"enhance\": false is left)")
    grid: bool = Field(False, description="ask for 2x2 grids and split each into four images (a prompt's \"grid\" field overrides it)")
    name: str = Field("", description="a name for the run (default: the prompt set's name)")
    project: str | None = Field(None, description="the project the run belongs to (made when new; default: default)")


# The outline of a prompt set for clients; the server checks all of it (README "Prompt sets"), with JSON paths.
PROMPT_SET_SCHEMA: JsonDict = {
    "type": "object", "required": ["prompts"],
    "properties": {"name": {"type": "string"}, "prompts": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["id", "prompt"],
        "properties": {"id": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}, "prompt": {"type": "string", "minLength": 1},
                       "title": {"type": "string"}, "scene": {"type": "string"}, "mood": {"type": "string"},
                       "negative_prompt": {"type": "string"}, "seed": {"type": "integer", "minimum": 0},
                       "size": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}}}},
}


class CreateRun(RunOptions):
    prompt_set: Any = Field(..., description='a prompt set as the CLI reads it: {"name": …, "prompts": [{"id": …, "prompt": …}]}',
                            json_schema_extra=PROMPT_SET_SCHEMA)


class CreateRunUpload(BaseModel):
    """multipart/form-data: the prompt set as a file, the options as a JSON text."""

    prompt_set: bytes = Field(..., json_schema_extra={"format": "binary"}, description="a zip bundle (JSON and its images) or a JSON file")
    options: str = Field("{}", description="RunOptions as JSON")


class Generate(RunOptions):
    prompt: str = Field(..., description="what to make")
    negative_prompt: str = ""
    title: str = ""
    seed: int | None = None
    size: str | None = Field(None, examples=["1024x1024"])
    wait: bool = Field(False, description="block until the images are made (at most wait_s), else answer 202 at once")
    wait_s: float | None = Field(None, description="the longest to wait (capped by the server's [api] generate_wait_s)")


class Validate(RunOptions):
    prompt_set: Any = Field(..., json_schema_extra=PROMPT_SET_SCHEMA)


class Resume(Strict):
    retry_failed: bool = False
    budget_usd: float | None = None
    concurrency: int | None = None


class Review(Strict):
    """Only the fields sent are changed; ``null`` stars clears them."""

    stars: int | None = Field(None, description="1–5, or null to clear")
    decision: Literal["approved", "rejected", "none"] | None = None
    note: str | None = None


class NewToken(Strict):
    name: str
    role: Literal["reviewer", "operator", "admin"] = "reviewer"


class RunOut(BaseModel):
    id: int
    name: str
    status: str
    outcome: str
    total: int
    completed: int
    failed: int
    blocked: int
    running: int
    done: int
    cost_usd: float
    elapsed_s: float | None
    created_at: str
    config: dict[str, Any]
    error: str
    links: dict[str, str]

    @classmethod
    def of(cls, r: RunSummary) -> "RunOut":
        base = f"/v1/runs/{r.id}"
        links = {"self": base, "items": f"{base}/items", "events": f"{base}/events", "export": f"{base}/export.zip"}
        return cls(**r.as_dict(), links=links)


class RunPage(BaseModel):
    data: list[RunOut]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class ItemPage(BaseModel):
    run: RunOut
    data: list[dict[str, Any]]
    next_cursor: str | None = None


class GenerateOut(BaseModel):
    run: RunOut
    images: list[dict[str, Any]]


def config_from(options: RunOptions, defaults: RunConfig) -> RunConfig:
    """A run's configuration: the options given, the configured defaults for the rest."""
    judges = options.judges or defaults.judges
    refiners = options.refiners or defaults.refiners
    return RunConfig(
        providers=list(options.providers if options.providers is not None else defaults.providers),
        judge=judges[0], judge_fallbacks=list(judges[1:]), refiner=refiners[0], refiner_fallbacks=list(refiners[1:]),
        routing=options.routing or defaults.routing,
        iterations=options.iterations if options.iterations is not None else defaults.iterations,
        target_score=options.target_score, concurrency=options.concurrency if options.concurrency is not None else defaults.concurrency,
        block_rewrites=options.block_rewrites if options.block_rewrites is not None else defaults.block_rewrites,
        budget_usd=options.budget_usd, enhance=options.enhance, grid=options.grid,
    )
