"""The PostgreSQL test database: one fresh database per test session, emptied before each test.

The server is ``DARKROOM_TEST_PG_URL`` (default: trust auth on 127.0.0.1:5432, database ``test``,
as on this project's machines and as ``.ci/run`` sets one up). Each session creates
``darkroom_test_<pid>_<random>`` and drops it at the end. Before a test its tables are truncated (fast:
the schema stays migrated), or, for a test marked ``empty_database``, the schema is dropped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool, Pool

SERVER_URL = os.environ.get("DARKROOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_engines: dict[str, Engine] = {}


def _admin(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 10})
    return _engines[url]


@contextlib.contextmanager
def session_database() -> Iterator[str]:
    # the pid and a random part: sessions in other containers (their own pid numbering) share the server
    name = f"darkroom_test_{os.getpid()}_{secrets.token_hex(4)}"
    server = _admin(SERVER_URL)
    with server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = make_url(SERVER_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        engine = _engines.pop(url, None)
        if engine is not None:
            engine.dispose()
        with server.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        server.dispose()
        _engines.pop(SERVER_URL, None)


def reset_database(url: str, *, drop: bool = False) -> None:
    """Empty the database for the next test; connections a previous test left open are ended first."""
    with _admin(url).connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                             "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        tables = [t for t in sa.inspect(conn).get_table_names() if t != "schema_migration"]
        if drop or not tables:
            conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            conn.execute(sa.text("CREATE SCHEMA public"))
            return
        quoted = ", ".join(f'"{t}"' for t in tables)
        conn.execute(sa.text(f"TRUNCATE {quoted} RESTART IDENTITY CASCADE"))


_opened: list[Any] = []


def _record(dbapi_connection: Any, _record: Any) -> None:
    _opened.append(dbapi_connection)


event.listen(Pool, "connect", _record)


def close_test_connections() -> None:
    """Close the connections a test's engines left open (a test need not dispose every engine it made);
    psycopg would warn about each one when it is garbage-collected."""
    while _opened:
        conn = _opened.pop()
        with contextlib.suppress(Exception):
            if not getattr(conn, "closed", True):
                conn.close()
