"""The schema is versioned; a database from the first version upgrades itself on start."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from pipeline.config import Settings
from pipeline.store import models  # noqa: F401  (registers the tables)
from pipeline.store.db import create_db_engine, open_database
from pipeline.store.migrations import MIGRATIONS, applied, migrate, schema_version

pytestmark = pytest.mark.empty_database  # each test builds its schema from nothing (or from version 1)


def test_a_version_1_database_upgrades_and_keeps_its_data(settings: Settings) -> None:
    engine = create_db_engine(settings.database_url)
    migrate(engine, upto="m001_initial")
    assert schema_version(engine) == 1
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO prompt_set (id, name, source, sha256, prompt_count, meta, created_at) "
                             "VALUES (1, 'old set', 'x.json', 'abc', 1, '{}', :t)"), {"t": now})
        conn.execute(sa.text("INSERT INTO prompt (id, prompt_set_id, position, key, title, scene, mood, prompt, negative_prompt, tags, meta) "
                             "VALUES (1, 1, 0, 'p1', '', '', '', 'A fox', '', '[]', '{}')"))
        conn.execute(sa.text("INSERT INTO run (id, prompt_set_id, name, status, config, output_dir, total, completed, failed, blocked, "
                             "cost_usd, error, cancel_requested, owner, created_at) "
                             "VALUES (1, 1, 'old run', 'completed', '{}', 'runs/1', 1, 1, 0, 0, 0.5, '', FALSE, '', :t)"), {"t": now})
        conn.execute(sa.text("INSERT INTO run_item (id, run_id, prompt_id, status, cost_usd, error_kind, error_message) "
                             "VALUES (1, 1, 1, 'completed', 0.5, '', '')"))
        conn.execute(sa.text("INSERT INTO iteration (id, run_item_id, number, prompt_text, negative_prompt, provider, model, parameters, "
                             "status, image_path, mime_type, sha256, error_kind, error_message, started_at) "
                             "VALUES (1, 1, 1, 'A fox', '', 'offline', 'm', '{}', 'ok', 'results/p1/iteration_1.jpg', 'image/jpeg', 'h', '', '', :t)"),
                     {"t": now})
    engine.dispose()

    upgraded = open_database(settings)  # what every start does
    assert applied(upgraded) == [m.__name__ for m in MIGRATIONS]
    with upgraded.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM run WHERE id = 1")).scalar() == "old run"
        assert conn.execute(sa.text("SELECT image_path FROM iteration WHERE id = 1")).scalar() == "results/p1/iteration_1.jpg"
        assert conn.execute(sa.text("SELECT COUNT(*) FROM prompt_element")).scalar() == 0
        assert conn.execute(sa.text("SELECT COUNT(*) FROM thumbnail")).scalar() == 0
        # an old iteration has no request id, original URL or service metadata: empty, never NULL
        request_id, source_url, meta = conn.execute(sa.text("SELECT request_id, source_url, service_meta FROM iteration WHERE id = 1")).one()
        assert (request_id, source_url, json.loads(meta) if isinstance(meta, str) else meta) == ("", "", {})  # PostgreSQL decodes JSON
    # Starting again applies nothing more.
    assert migrate(upgraded) == []


def test_migrations_build_exactly_the_schema_the_models_describe(settings: Settings) -> None:
    engine = open_database(settings)
    inspector = sa.inspect(engine)
    for table in SQLModel.metadata.sorted_tables:
        db_columns = {c["name"]: c for c in inspector.get_columns(table.name)}
        assert set(db_columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert db_columns[column.name]["nullable"] == column.nullable, f"{table.name}.{column.name}"
        db_uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints(table.name)}
        for constraint in table.constraints:
            if isinstance(constraint, sa.UniqueConstraint):
                assert tuple(c.name for c in constraint.columns) in db_uniques, f"{table.name}: {constraint.name}"


@pytest.mark.sqlite_only
def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(settings: Settings) -> None:
    engine = open_database(settings)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 5000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_the_provider_request_columns_round_trip_through_the_model(settings: Settings) -> None:
    from sqlmodel import select

    from pipeline.store.db import session
    from pipeline.store.models import Iteration, Prompt, PromptSet, Run, RunItem

    engine = open_database(settings)
    with session(engine) as s:
        ps = PromptSet(name="s", sha256="x")
        s.add(ps)
        s.flush()
        prompt = Prompt(prompt_set_id=ps.id, position=0, key="p1", prompt="A fox")
        run = Run(prompt_set_id=ps.id)
        s.add_all([prompt, run])
        s.flush()
        item = RunItem(run_id=run.id, prompt_id=prompt.id)
        s.add(item)
        s.flush()
        s.add(Iteration(run_item_id=item.id, number=1, prompt_text="A fox", request_id="req-1", source_url="https://cdn.example/1.png",
                        service_meta={"service": "fal", "submission": {"status_url": "https://q/1/status"}, "response": {"seed": 4}}))
        s.commit()
    with session(engine) as s:
        it = s.exec(select(Iteration)).one()
        assert (it.request_id, it.source_url, it.service_meta["response"]["seed"]) == ("req-1", "https://cdn.example/1.png", 4)
