"""Ordered schema migrations, recorded by name in ``schema_migration``.

A database from any earlier version upgrades itself on start: :func:`migrate` applies, in
order, every migration it has not recorded yet. Migrations are frozen history: never edit one
that has shipped; add ``m00N_...`` after the last. They use SQLAlchemy Core and plain
``ALTER TABLE ... ADD COLUMN`` so SQLite and PostgreSQL both work. ``tests/test_migrations.py``
checks that the result matches ``models.py`` exactly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("pipeline.store.migrations")

Migration = Callable[[Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def _json(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON, nullable=False)


def _pk() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer, primary_key=True)


@migration
def m001_initial(conn: Connection) -> None:
    md = sa.MetaData()
    S, I, F, B = sa.String, sa.Integer, sa.Float, sa.Boolean  # noqa: E741  (column-type shorthands)
    DT = sa.DateTime(timezone=True)
    sa.Table(
        "prompt_set", md, _pk(),
        sa.Column("name", S, nullable=False), sa.Column("source", S, nullable=False),
        sa.Column("sha256", S, nullable=False, index=True), sa.Column("prompt_count", I, nullable=False),
        _json("meta"), sa.Column("created_at", DT, nullable=False),
    )
    sa.Table(
        "prompt", md, _pk(),
        sa.Column("prompt_set_id", I, sa.ForeignKey("prompt_set.id"), nullable=False, index=True),
        sa.Column("position", I, nullable=False), sa.Column("key", S, nullable=False),
        sa.Column("title", S, nullable=False), sa.Column("scene", S, nullable=False),
        sa.Column("mood", S, nullable=False), sa.Column("prompt", S, nullable=False),
        sa.Column("negative_prompt", S, nullable=False), sa.Column("seed", I), sa.Column("size", S),
        _json("tags"), _json("meta"),
        sa.UniqueConstraint("prompt_set_id", "key", name="uq_prompt_set_key"),
    )
    sa.Table(
        "run", md, _pk(),
        sa.Column("prompt_set_id", I, sa.ForeignKey("prompt_set.id"), nullable=False, index=True),
        sa.Column("name", S, nullable=False), sa.Column("status", S, nullable=False, index=True),
        _json("config"), sa.Column("output_dir", S, nullable=False),
        sa.Column("total", I, nullable=False), sa.Column("completed", I, nullable=False),
        sa.Column("failed", I, nullable=False), sa.Column("blocked", I, nullable=False),
        sa.Column("cost_usd", F, nullable=False), sa.Column("error", S, nullable=False),
        sa.Column("cancel_requested", B, nullable=False), sa.Column("owner", S, nullable=False),
        sa.Column("heartbeat_at", DT), sa.Column("created_at", DT, nullable=False),
        sa.Column("started_at", DT), sa.Column("finished_at", DT),
    )
    sa.Table(
        "run_item", md, _pk(),
        sa.Column("run_id", I, sa.ForeignKey("run.id"), nullable=False, index=True),
        sa.Column("prompt_id", I, sa.ForeignKey("prompt.id"), nullable=False, index=True),
        sa.Column("status", S, nullable=False, index=True), sa.Column("final_iteration", I),
        sa.Column("best_score", F), sa.Column("cost_usd", F, nullable=False),
        sa.Column("error_kind", S, nullable=False), sa.Column("error_message", S, nullable=False),
        sa.Column("started_at", DT), sa.Column("finished_at", DT),
        sa.UniqueConstraint("run_id", "prompt_id", name="uq_run_item"),
    )
    sa.Table(
        "iteration", md, _pk(),
        sa.Column("run_item_id", I, sa.ForeignKey("run_item.id"), nullable=False, index=True),
        sa.Column("number", I, nullable=False), sa.Column("prompt_text", S, nullable=False),
        sa.Column("negative_prompt", S, nullable=False), sa.Column("provider", S, nullable=False),
        sa.Column("model", S, nullable=False), sa.Column("seed", I), _json("parameters"),
        sa.Column("status", S, nullable=False, index=True), sa.Column("image_path", S, nullable=False),
        sa.Column("mime_type", S, nullable=False), sa.Column("width", I), sa.Column("height", I),
        sa.Column("sha256", S, nullable=False), sa.Column("byte_size", I), sa.Column("latency_ms", F),
        sa.Column("cost_usd", F), sa.Column("error_kind", S, nullable=False),
        sa.Column("error_message", S, nullable=False), sa.Column("started_at", DT, nullable=False),
        sa.Column("finished_at", DT),
        sa.UniqueConstraint("run_item_id", "number", name="uq_iteration_number"),
    )
    sa.Table(
        "evaluation", md, _pk(),
        sa.Column("iteration_id", I, sa.ForeignKey("iteration.id"), nullable=False, unique=True),
        sa.Column("judge", S, nullable=False), sa.Column("model", S, nullable=False),
        sa.Column("overall_score", F, nullable=False, index=True), _json("criteria"), _json("checks"),
        _json("issues"), sa.Column("top_suggestion", S, nullable=False),
        sa.Column("raw_response", S, nullable=False), sa.Column("latency_ms", F), sa.Column("cost_usd", F),
        sa.Column("created_at", DT, nullable=False),
    )
    sa.Table(
        "refinement", md, _pk(),
        sa.Column("run_item_id", I, sa.ForeignKey("run_item.id"), nullable=False, index=True),
        sa.Column("from_iteration", I, nullable=False), sa.Column("new_prompt", S, nullable=False),
        sa.Column("refiner", S, nullable=False), sa.Column("model", S, nullable=False),
        sa.Column("rationale", S, nullable=False), _json("edits"), sa.Column("latency_ms", F),
        sa.Column("cost_usd", F), sa.Column("created_at", DT, nullable=False),
        sa.UniqueConstraint("run_item_id", "from_iteration", name="uq_refinement_from"),
    )
    sa.Table(
        "rating", md, _pk(),
        sa.Column("iteration_id", I, sa.ForeignKey("iteration.id"), nullable=False, index=True),
        sa.Column("reviewer", S, nullable=False), sa.Column("stars", I),
        sa.Column("decision", S, nullable=False), sa.Column("note", S, nullable=False),
        sa.Column("rated_at", DT, nullable=False, index=True),
        sa.UniqueConstraint("iteration_id", "reviewer", name="uq_rating_reviewer"),
    )
    sa.Table(
        "provider_call", md, _pk(),
        sa.Column("run_id", I, sa.ForeignKey("run.id"), index=True),
        sa.Column("iteration_id", I, sa.ForeignKey("iteration.id")),
        sa.Column("provider", S, nullable=False), sa.Column("model", S, nullable=False),
        sa.Column("operation", S, nullable=False), sa.Column("started_at", DT, nullable=False),
        sa.Column("latency_ms", F, nullable=False), sa.Column("outcome", S, nullable=False),
        sa.Column("http_status", I), sa.Column("error_kind", S, nullable=False),
        sa.Column("error_message", S, nullable=False), sa.Column("attempt", I, nullable=False),
        sa.Column("cost_usd", F),
        sa.Index("ix_provider_call_provider_started", "provider", "started_at"),
    )
    md.create_all(conn)


@migration
def m002_elements_thumbnails_step_keys(conn: Connection) -> None:
    """Per-prompt DSG elements, gallery thumbnails, and step keys that recognise a repeated call."""
    md = sa.MetaData()
    sa.Table("prompt", md, _pk())  # existing tables, named so the foreign keys resolve
    sa.Table("iteration", md, _pk())
    thumbnail = sa.Table(
        "thumbnail", md,
        sa.Column("iteration_id", sa.Integer, sa.ForeignKey("iteration.id"), primary_key=True),
        sa.Column("mime_type", sa.String, nullable=False), sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False), sa.Column("data", sa.LargeBinary, nullable=False),
    )
    element = sa.Table(
        "prompt_element", md, _pk(),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompt.id"), nullable=False, index=True),
        sa.Column("number", sa.Integer, nullable=False), sa.Column("category", sa.String, nullable=False),
        sa.Column("question", sa.String, nullable=False), sa.Column("tuple_text", sa.String, nullable=False),
        _json("parent_numbers"), sa.Column("critical", sa.Boolean, nullable=False),
        sa.Column("source", sa.String, nullable=False), sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("prompt_id", "number", name="uq_element_prompt_number"),
    )
    element.create(conn)
    thumbnail.create(conn)
    conn.execute(sa.text("ALTER TABLE provider_call ADD COLUMN step_key VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("CREATE INDEX ix_provider_call_step_key ON provider_call (step_key)"))



@migration
def m003_routing_and_breaker_events(conn: Connection) -> None:
    """Which service served each step and why others were skipped; circuit-breaker transitions."""
    for table in ("iteration", "evaluation", "refinement"):
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN routing JSON NOT NULL DEFAULT '{{}}'"))
    sa.Table(
        "breaker_event", sa.MetaData(), _pk(),
        sa.Column("service", sa.String, nullable=False, index=True), sa.Column("state", sa.String, nullable=False),
        sa.Column("reason", sa.String, nullable=False), sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("run_id", sa.Integer), sa.Column("at", sa.DateTime(timezone=True), nullable=False, index=True),
    ).create(conn)


@migration
def m004_review_events(conn: Connection) -> None:
    """Every reviewer action as an event row (undo, history); when each reviewer's decision was made."""
    stamp = sa.DateTime(timezone=True).compile(dialect=conn.dialect)
    conn.execute(sa.text(f"ALTER TABLE rating ADD COLUMN decided_at {stamp}"))
    conn.execute(sa.text("UPDATE rating SET decided_at = rated_at WHERE decision != 'none'"))
    md = sa.MetaData()
    sa.Table("iteration", md, _pk())
    DT = sa.DateTime(timezone=True)
    sa.Table(
        "review_event", md, _pk(),
        sa.Column("iteration_id", sa.Integer, sa.ForeignKey("iteration.id"), nullable=False, index=True),
        sa.Column("reviewer", sa.String, nullable=False), sa.Column("action", sa.String, nullable=False),
        sa.Column("field", sa.String, nullable=False), sa.Column("before", sa.String), sa.Column("after", sa.String),
        sa.Column("before_at", DT), sa.Column("batch_id", sa.String, nullable=False, index=True),
        sa.Column("batch_size", sa.Integer, nullable=False), sa.Column("scope", sa.String, nullable=False),
        sa.Column("undoes", sa.String, nullable=False, index=True), sa.Column("at", DT, nullable=False),
        sa.Index("ix_review_event_reviewer_id", "reviewer", "id"),
    ).create(conn)


@migration
def m005_provider_requests(conn: Connection) -> None:
    """Per iteration: the service's request id (stored before waiting on it, so a resume polls it
    instead of paying twice), the image's original URL and the service's own metadata."""
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN request_id VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN source_url VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN service_meta JSON NOT NULL DEFAULT '{}'"))


@migration
def m006_stop_reason(conn: Connection) -> None:
    """Why each prompt stopped (``RunItem.stop_reason``). A failed or blocked prompt of an earlier
    run says so; why an earlier completed one stopped was not recorded and stays ``""``."""
    conn.execute(sa.text("ALTER TABLE run_item ADD COLUMN stop_reason VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("UPDATE run_item SET stop_reason = status WHERE status IN ('failed', 'blocked')"))


@migration
def m007_references(conn: Connection) -> None:
    """Prompt sets with images: each prompt's reference images (``prompt_reference``), and the
    style, set template and characters that go into its composed prompt."""
    conn.execute(sa.text("ALTER TABLE prompt ADD COLUMN style VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("ALTER TABLE prompt ADD COLUMN template VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("ALTER TABLE prompt ADD COLUMN characters JSON NOT NULL DEFAULT '[]'"))
    md = sa.MetaData()
    sa.Table("prompt", md, _pk())
    sa.Table(
        "prompt_reference", md, _pk(),
        sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompt.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer, nullable=False), sa.Column("role", sa.String, nullable=False),
        sa.Column("name", sa.String, nullable=False), sa.Column("character", sa.String, nullable=False),
        sa.Column("sha256", sa.String, nullable=False), sa.Column("mime_type", sa.String, nullable=False),
        sa.Column("byte_size", sa.Integer, nullable=False), sa.Column("path", sa.String, nullable=False),
    ).create(conn)


@migration
def m008_lineage(conn: Connection) -> None:
    """Lineage: every image's operation (generate, edit, variation, grid-cell, refine), its parent
    images and, for a grid cell, its index. Earlier images: iteration 1 was generated; a later one
    was refined from the iteration before it in the same prompt."""
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN operation VARCHAR NOT NULL DEFAULT 'generate'"))
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN parent_ids JSON NOT NULL DEFAULT '[]'"))
    conn.execute(sa.text("ALTER TABLE iteration ADD COLUMN cell_index INTEGER"))
    iteration = sa.Table("iteration", sa.MetaData(), _pk(), sa.Column("run_item_id", sa.Integer), sa.Column("number", sa.Integer),
                         sa.Column("operation", sa.String), _json("parent_ids"))
    ids = {(item, number): it_id for it_id, item, number in conn.execute(sa.select(iteration.c.id, iteration.c.run_item_id, iteration.c.number))}
    for (item, number), it_id in ids.items():
        parent = ids.get((item, number - 1))
        if parent is not None:
            conn.execute(iteration.update().where(iteration.c.id == it_id).values(operation="refine", parent_ids=[parent]))


@migration
def m009_api(conn: Connection) -> None:
    """The REST API's bearer tokens (hashed) and the responses kept for ``Idempotency-Key`` retries."""
    md = sa.MetaData()
    S, I = sa.String, sa.Integer  # noqa: E741  (column-type shorthands)
    DT = sa.DateTime(timezone=True)
    sa.Table(
        "api_token", md, _pk(),
        sa.Column("name", S, nullable=False, index=True), sa.Column("role", S, nullable=False),
        sa.Column("token_hash", S, nullable=False, unique=True), sa.Column("prefix", S, nullable=False),
        sa.Column("created_at", DT, nullable=False), sa.Column("last_used_at", DT), sa.Column("revoked_at", DT),
    )
    sa.Table(
        "api_idempotency", md, _pk(),
        sa.Column("token_id", I, sa.ForeignKey("api_token.id"), nullable=False, index=True),
        sa.Column("key", S, nullable=False), sa.Column("request_hash", S, nullable=False),
        sa.Column("status_code", I, nullable=False), _json("response"), sa.Column("created_at", DT, nullable=False),
        sa.UniqueConstraint("token_id", "key", name="uq_api_idempotency_key"),
    )
    md.create_all(conn)


@migration
def m011_projects(conn: Connection) -> None:
    """Projects group runs (defaults for new runs, a spending cap across them); every existing run
    joins the project ``default``, created here. Old runs keep their folders."""
    from pipeline.store.models import DEFAULT_PROJECT, utcnow

    DT = sa.DateTime(timezone=True)
    project = sa.Table(
        "project", sa.MetaData(), _pk(),
        sa.Column("name", sa.String, nullable=False, unique=True), sa.Column("slug", sa.String, nullable=False, unique=True),
        sa.Column("description", sa.String, nullable=False), _json("defaults"), sa.Column("budget_usd", sa.Float),
        sa.Column("status", sa.String, nullable=False), sa.Column("created_at", DT, nullable=False),
    )
    project.create(conn)
    conn.execute(sa.text("ALTER TABLE run ADD COLUMN project_id INTEGER REFERENCES project (id)"))
    conn.execute(sa.text("CREATE INDEX ix_run_project_id ON run (project_id)"))
    conn.execute(project.insert().values(name=DEFAULT_PROJECT, slug=DEFAULT_PROJECT, description="Runs made before projects existed",
                                         defaults={}, budget_usd=None, status="active", created_at=utcnow()))
    default_id = conn.execute(sa.select(project.c.id).where(project.c.name == DEFAULT_PROJECT)).scalar_one()
    conn.execute(sa.text("UPDATE run SET project_id = :p WHERE project_id IS NULL"), {"p": default_id})


@migration
def m012_workers(conn: Connection) -> None:
    """Worker processes: a prompt's lease (who executes it, until when), and each service's call
    slots, pacing and breaker shared by all workers."""
    conn.execute(sa.text("ALTER TABLE run_item ADD COLUMN lease_owner VARCHAR NOT NULL DEFAULT ''"))
    conn.execute(sa.text("ALTER TABLE run_item ADD COLUMN lease_until FLOAT NOT NULL DEFAULT 0"))
    md = sa.MetaData()
    S, F = sa.String, sa.Float
    sa.Table(
        "provider_slot", md, sa.Column("service", S, primary_key=True), sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("holder", S, nullable=False), sa.Column("lease_until", F, nullable=False),
    )
    sa.Table(
        "provider_pace", md, sa.Column("service", S, primary_key=True),
        sa.Column("next_start", F, nullable=False), sa.Column("paused_until", F, nullable=False),
    )
    sa.Table(
        "provider_health", md, sa.Column("service", S, primary_key=True),
        sa.Column("open_until", F, nullable=False), sa.Column("reason", S, nullable=False),
    )
    md.create_all(conn)
    # The claim's query walks only the prompts still to do, not a run's thousands of finished ones.
    conn.execute(sa.text("CREATE INDEX ix_run_item_open ON run_item (run_id, id) WHERE status IN ('pending', 'running')"))
    if conn.dialect.name == "postgresql":  # seeds are 32-bit unsigned: SQLite's INTEGER holds them, PostgreSQL's does not
        for table in ("prompt", "iteration"):
            conn.execute(sa.text(f"ALTER TABLE {table} ALTER COLUMN seed TYPE BIGINT"))


_LEDGER = sa.Table(
    "schema_migration",
    sa.MetaData(),
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def applied(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("schema_migration"):
            return []
        return [row[0] for row in conn.execute(sa.select(_LEDGER.c.name))]


def schema_version(engine: Engine) -> int:
    return len(applied(engine))


def migrate(engine: Engine, *, upto: str | None = None) -> list[str]:
    """Apply pending migrations in order (each in its own transaction); return their names.

    ``upto`` stops after the named migration (the tests use it to build an old database).
    """
    from pipeline.store.models import utcnow

    with engine.begin() as conn:
        _LEDGER.create(conn, checkfirst=True)
    done = set(applied(engine))
    ran: list[str] = []
    for fn in MIGRATIONS:
        name = fn.__name__
        if name not in done:
            try:
                with engine.begin() as conn:
                    fn(conn)
                    conn.execute(_LEDGER.insert().values(name=name, applied_at=utcnow()))
            except sa.exc.DatabaseError:
                # Another process starting at the same moment may have applied it first.
                if name not in applied(engine):
                    raise
            else:
                log.info("applied migration %s", name)
                ran.append(name)
        if name == upto:
            break
    return ran
