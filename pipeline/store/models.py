"""The database tables (SQLModel). The dashboard and its charts read exactly these.

The tables describe the newest schema; ``migrations.py`` builds and upgrades a database to it.
Anything JSON is stored in a JSON column so that SQLite and PostgreSQL both work.

    project ─── run                                   (a campaign, a client, a book: runs grouped, defaults, a cap)
    prompt_set ─┬─ prompt ─── prompt_element          (what the team asked for)
                └─ run ─── run_item ─┬─ iteration ─┬─ evaluation
                                     │             ├─ rating, review_event (who did what, when: undo and history)
                                     │             └─ thumbnail (small JPEG/WebP bytes for the gallery)
                                     └─ refinement
    provider_call                                     (one row per external call attempt)
    breaker_event                                     (circuit-breaker transitions per service)
    provider_slot, provider_pace, provider_health     (a service's limits and breaker shared by worker processes)
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

RUN_STATUSES = ("queued", "running", "interrupted", "paused", "cancelled", "completed", "failed", "deleting")
DEFAULT_PROJECT = "default"  # the project runs from before projects (and runs launched without one) belong to
ITEM_STATUSES = ("pending", "running", "completed", "failed", "blocked")
ITERATION_STATUSES = ("running", "ok", "failed", "blocked")
DECISIONS = ("approved", "rejected", "none")
OPERATIONS = ("generate", "evaluate", "refine")
LINEAGE_OPERATIONS = ("generate", "edit", "variation", "grid-cell", "refine")  # what made an image (Iteration.operation)
OUTCOMES = ("ok", "retried", "error", "blocked")  # "retried": failed, and the same service was asked again
TERMINAL_ITEM_STATUSES = ("completed", "failed", "blocked")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Row(Protocol):
    id: int | None


# Ids are INTEGER columns: PostgreSQL's is 32 bits (SQLite's 64), so no row id is larger than this,
# and a larger number from a URL or an API path is "not found" before any query (PostgreSQL would
# refuse it with "integer out of range").
MAX_ROW_ID = 2**31 - 1


def row_id(row: _Row) -> int:
    """The id of a row read from, or flushed to, the database (only a row never flushed has none)."""
    if row.id is None:
        raise RuntimeError(f"this {type(row).__name__} has no id: it was never flushed to the database")
    return row.id


def _new_list() -> list[Any]:
    return []


def json_field(default_factory: Any = dict) -> Any:
    # pydantic inspects a default factory's signature on every use, and for the builtin ``list``
    # that parses its text signature (~0.27 ms a field): a plain function costs ~15 µs.
    if default_factory is list:
        default_factory = _new_list
    return Field(default_factory=default_factory, sa_column=Column(JSON, nullable=False))


class PromptSet(SQLModel, table=True):
    __tablename__ = "prompt_set"
    id: int | None = Field(default=None, primary_key=True)
    name: str
    source: str = ""
    sha256: str = Field(index=True)
    prompt_count: int = 0
    meta: dict[str, Any] = json_field()
    created_at: datetime = Field(default_factory=utcnow)


class Prompt(SQLModel, table=True):
    __tablename__ = "prompt"
    __table_args__ = (UniqueConstraint("prompt_set_id", "key", name="uq_prompt_set_key"),)
    id: int | None = Field(default=None, primary_key=True)
    prompt_set_id: int = Field(foreign_key="prompt_set.id", index=True)
    position: int
    key: str  # the prompt's own id from the JSON
    title: str = ""
    scene: str = ""
    mood: str = ""
    prompt: str
    negative_prompt: str = ""
    seed: int | None = Field(default=None, sa_type=BigInteger)  # 32-bit unsigned: beyond PostgreSQL's INTEGER
    size: str | None = None
    tags: list[str] = json_field(list)
    meta: dict[str, Any] = json_field()
    style: str = ""  # its own or its set's; goes into the composed prompt
    template: str = ""  # the set's own template ("" = the settings' [prompt] template)
    characters: list[dict[str, Any]] = json_field(list)  # [{id, name, traits}] of the characters it shows


class PromptReference(SQLModel, table=True):
    """A reference image sent with a prompt (its own, or one of its characters'). The bytes are
    kept in the data folder's content-addressed store (``path``), so a resumed run still has them."""

    __tablename__ = "prompt_reference"
    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    position: int
    role: str  # subject | style | composition | mask
    name: str = ""  # its path in the bundle
    character: str = ""  # the character's id, when it is a character's image
    sha256: str
    mime_type: str
    byte_size: int
    path: str  # relative to the data folder


class PromptElement(SQLModel, table=True):
    """One atomic yes/no requirement of a prompt (DSG/TIFA); made once per prompt, editable."""

    __tablename__ = "prompt_element"
    __table_args__ = (UniqueConstraint("prompt_id", "number", name="uq_element_prompt_number"),)
    id: int | None = Field(default=None, primary_key=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    number: int
    category: str
    question: str
    tuple_text: str = ""
    parent_numbers: list[int] = json_field(list)
    critical: bool = True
    source: str = ""  # which decomposer made it, or "reviewer"
    created_at: datetime = Field(default_factory=utcnow)


class Project(SQLModel, table=True):
    """A group of runs (a campaign, a client, a book): defaults for its new runs and a spending cap across them.

    ``status`` is "active", or "deleting" from the moment a delete starts until its rows are gone
    (a delete interrupted half-way is finished by running it again, or by ``doctor --repair``).
    """

    __tablename__ = "project"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    slug: str = Field(unique=True)  # its folder under data/runs/
    description: str = ""
    defaults: dict[str, Any] = json_field()  # RunConfig fields (providers, judge, refiner, iterations, budget_usd) + template, style
    budget_usd: float | None = None  # spending cap across all its runs
    status: str = "active"
    created_at: datetime = Field(default_factory=utcnow)


class Run(SQLModel, table=True):
    __tablename__ = "run"
    id: int | None = Field(default=None, primary_key=True)
    prompt_set_id: int = Field(foreign_key="prompt_set.id", index=True)
    project_id: int | None = Field(default=None, foreign_key="project.id", index=True)
    name: str = ""
    status: str = Field(default="queued", index=True)
    config: dict[str, Any] = json_field()
    output_dir: str = ""  # relative to the data folder when inside it, else absolute
    total: int = 0
    completed: int = 0
    failed: int = 0
    blocked: int = 0
    cost_usd: float = 0.0
    error: str = ""
    cancel_requested: bool = False
    owner: str = ""  # "host:pid" of the process executing it
    heartbeat_at: datetime | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunItem(SQLModel, table=True):
    __tablename__ = "run_item"
    __table_args__ = (
        UniqueConstraint("run_id", "prompt_id", name="uq_run_item"),
        # What worker processes claim from (pipeline.runs.leases), the prompts still to do, is the
        # partial index ix_run_item_open that migration m012 makes. It is not declared here: the
        # schema comes from the migrations, and its dialect options would load SQLAlchemy's
        # PostgreSQL dialect into every process, SQLite ones included (30 ms of each start).
    )
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    prompt_id: int = Field(foreign_key="prompt.id", index=True)
    status: str = Field(default="pending", index=True)
    final_iteration: int | None = None  # number of the best iteration so far
    best_score: float | None = None
    cost_usd: float = 0.0
    error_kind: str = ""
    error_message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Why the prompt stopped where it did (a key of pipeline.display.STOP_REASONS): target_reached,
    # prompt_unchanged, iterations_done, failed, blocked; budget, paused, cancelled or interrupted
    # while it waits to be resumed; "" while it runs, or when an earlier version did not record it.
    stop_reason: str = ""
    # The worker executing it (``python -m pipeline worker``) and until when (Unix seconds) its claim
    # holds; a worker that stops heart-beating (kill -9, a lost machine) loses it then. "" / 0: none.
    lease_owner: str = ""
    lease_until: float = 0.0


class Iteration(SQLModel, table=True):
    __tablename__ = "iteration"
    __table_args__ = (UniqueConstraint("run_item_id", "number", name="uq_iteration_number"),)
    id: int | None = Field(default=None, primary_key=True)
    run_item_id: int = Field(foreign_key="run_item.id", index=True)
    number: int
    prompt_text: str  # exactly what was sent
    negative_prompt: str = ""
    provider: str = ""
    model: str = ""
    seed: int | None = Field(default=None, sa_type=BigInteger)  # 32-bit unsigned: beyond PostgreSQL's INTEGER
    parameters: dict[str, Any] = json_field()
    status: str = Field(default="running", index=True)
    image_path: str = ""  # relative to the run's output folder
    mime_type: str = ""
    width: int | None = None
    height: int | None = None
    sha256: str = ""
    byte_size: int | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None
    error_kind: str = ""
    error_message: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    # {"served_by", "attempts", "skipped": [{"service", "reason"}], "rewrite": {"from", "rationale", "blocked_by"}}
    routing: dict[str, Any] = json_field()
    # The service's id for the generation, recorded the moment it accepted the job (before waiting
    # on it): a resume after a crash polls this job instead of submitting, and paying, again.
    request_id: str = ""
    source_url: str = ""  # where the image was downloaded from (the service's own URL), "" when sent inline
    # {"service": name, "submission": {status/result URLs…}, "response": the service's own metadata (seed, timings, credits…)}
    service_meta: dict[str, Any] = json_field()
    # Lineage: what made this image (one of LINEAGE_OPERATIONS) and from which images (iteration ids):
    # a refinement's parent is the image judged before it; a grid cell's is the grid (cell_index 1–4,
    # reading order); a variation's is the image it varies.
    operation: str = "generate"
    parent_ids: list[int] = json_field(list)
    cell_index: int | None = None


class Thumbnail(SQLModel, table=True):
    """The gallery's small copy of an iteration's image, kept in the database.

    Small blobs read faster from SQLite than from files, a gallery page gets all its
    thumbnails in one query, and no extra file is created per image.
    """

    __tablename__ = "thumbnail"
    iteration_id: int = Field(foreign_key="iteration.id", primary_key=True)
    mime_type: str
    width: int
    height: int
    data: bytes


class Evaluation(SQLModel, table=True):
    __tablename__ = "evaluation"
    id: int | None = Field(default=None, primary_key=True)
    iteration_id: int = Field(foreign_key="iteration.id", unique=True)
    judge: str
    model: str = ""
    overall_score: float = Field(index=True)  # 0–10, computed in code from the answers
    criteria: dict[str, Any] = json_field()
    checks: list[dict[str, Any]] = json_field(list)
    issues: list[dict[str, Any]] = json_field(list)
    top_suggestion: str = ""
    raw_response: str = ""
    latency_ms: float | None = None
    cost_usd: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    routing: dict[str, Any] = json_field()


class Refinement(SQLModel, table=True):
    __tablename__ = "refinement"
    __table_args__ = (UniqueConstraint("run_item_id", "from_iteration", name="uq_refinement_from"),)
    id: int | None = Field(default=None, primary_key=True)
    run_item_id: int = Field(foreign_key="run_item.id", index=True)
    from_iteration: int
    new_prompt: str
    refiner: str
    model: str = ""
    rationale: str = ""
    edits: list[dict[str, Any]] = json_field(list)
    latency_ms: float | None = None
    cost_usd: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    routing: dict[str, Any] = json_field()


class Rating(SQLModel, table=True):
    __tablename__ = "rating"
    __table_args__ = (UniqueConstraint("iteration_id", "reviewer", name="uq_rating_reviewer"),)
    id: int | None = Field(default=None, primary_key=True)
    iteration_id: int = Field(foreign_key="iteration.id", index=True)
    reviewer: str
    stars: int | None = None  # 1–5
    decision: str = "none"
    note: str = ""
    rated_at: datetime = Field(default_factory=utcnow, index=True)
    decided_at: datetime | None = None  # when the current decision was made (None while "none"): the "latest" rule


class ReviewEvent(SQLModel, table=True):
    """One reviewer action on one image: who, what, when, before → after. Append-only.

    The actions of one click or one bulk action share ``batch_id`` (one undo reverses them all);
    an undo is itself a batch of ``undo`` events naming the batch it reverses in ``undoes``.
    ``rating`` is the current state these events lead to, written in the same transaction.
    """

    __tablename__ = "review_event"
    __table_args__ = (Index("ix_review_event_reviewer_id", "reviewer", "id"),)
    id: int | None = Field(default=None, primary_key=True)
    iteration_id: int = Field(foreign_key="iteration.id", index=True)
    reviewer: str
    action: str  # star | clear_stars | approve | reject | clear_decision | note | undo
    field: str  # stars | decision | note
    before: str | None = None  # the value as text ("4", "approved", a note); None = no stars
    after: str | None = None
    before_at: datetime | None = None  # decisions: when the `before` decision had been made (undo restores it)
    batch_id: str = Field(index=True)
    batch_size: int = 1  # images the batch changed
    scope: str = ""  # what a bulk action was applied to, as confirmed ("42 selected images")
    undoes: str = Field(default="", index=True)  # the batch an undo event reverses
    at: datetime = Field(default_factory=utcnow)


class ProviderCall(SQLModel, table=True):
    __tablename__ = "provider_call"
    __table_args__ = (Index("ix_provider_call_provider_started", "provider", "started_at"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = Field(default=None, foreign_key="run.id", index=True)
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id")
    step_key: str = Field(default="", index=True)  # "run/item/iteration/operation": recognises a repeat
    provider: str
    model: str = ""
    operation: str
    started_at: datetime = Field(default_factory=utcnow)
    latency_ms: float = 0.0
    outcome: str
    http_status: int | None = None
    error_kind: str = ""
    error_message: str = ""
    attempt: int = 1
    cost_usd: float | None = None


class BreakerEvent(SQLModel, table=True):
    """A circuit breaker changing state (closed → open → half_open → closed), for the Providers page."""

    __tablename__ = "breaker_event"
    id: int | None = Field(default=None, primary_key=True)
    service: str = Field(index=True)  # "providers/fal"
    state: str  # closed | open | half_open
    reason: str
    failures: int = 0  # consecutive failures at the time
    run_id: int | None = None  # the run that saw it (breakers outlive runs)
    at: datetime = Field(default_factory=utcnow, index=True)


class ProviderSlot(SQLModel, table=True):
    """One of a service's ``max_concurrency`` call slots, shared by every worker process: a call
    holds one while in flight; a holder that dies loses it at ``lease_until`` (Unix seconds)."""

    __tablename__ = "provider_slot"
    service: str = Field(primary_key=True)  # "providers/fal"
    slot: int = Field(primary_key=True)
    holder: str = ""  # "" = free
    lease_until: float = 0.0


class ProviderPace(SQLModel, table=True):
    """A service's shared pacing: the earliest start of its next call (``requests_per_minute``) and
    a pause it asked for (``Retry-After``), in Unix seconds, for all worker processes at once."""

    __tablename__ = "provider_pace"
    service: str = Field(primary_key=True)
    next_start: float = 0.0
    paused_until: float = 0.0


class ProviderHealth(SQLModel, table=True):
    """A service's circuit breaker as all worker processes see it: open until ``open_until`` (Unix seconds)."""

    __tablename__ = "provider_health"
    service: str = Field(primary_key=True)
    open_until: float = 0.0
    reason: str = ""


class ApiToken(SQLModel, table=True):
    """A bearer token of the REST API (``python -m pipeline token create``). Only its SHA-256 is
    kept: the token itself is shown once. ``role`` is reviewer, operator or admin; the name is the
    reviewer its reviews are written as."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)  # one active token per name (a revoked one's name may be reused)
    role: str
    token_hash: str = Field(unique=True)  # hex SHA-256 of the token
    prefix: str = ""  # the token's first characters, to tell tokens apart in a list
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class ApiIdempotency(SQLModel, table=True):
    """A request made with an ``Idempotency-Key``: a retry replays ``response`` instead of starting
    a second (paid) run. ``status_code`` 0 while the first request is still being served."""

    __tablename__ = "api_idempotency"
    __table_args__ = (UniqueConstraint("token_id", "key", name="uq_api_idempotency_key"),)
    id: int | None = Field(default=None, primary_key=True)
    token_id: int = Field(foreign_key="api_token.id", index=True)
    key: str
    request_hash: str  # method, path and body: the same key with another request is refused
    status_code: int = 0
    response: dict[str, Any] = json_field()
    created_at: datetime = Field(default_factory=utcnow)
