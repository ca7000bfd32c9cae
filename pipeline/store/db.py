"""The database engine: one per process, SQLite in WAL mode with a busy timeout by default.

Use one short ``with session(engine) as s:`` per unit of work and never share a Session
across threads. Queries go through SQLAlchemy/SQLModel only, nothing SQLite-specific, so
``DARKROOM_DATABASE_URL`` can point at PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, create_engine

from pipeline.config import Settings
from pipeline.store.migrations import migrate

BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode except on power loss of the last commit
    cur.close()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; the database itself is created and migrated by :func:`open_database`."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def open_database(settings: Settings) -> Engine:
    """Create the engine and bring the schema up to date."""
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    return engine


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
