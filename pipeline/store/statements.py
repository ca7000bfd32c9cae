"""Row writes for a run's hot path: statements built once, run with bound parameters.

A prompt job writes its rows with these on its session's connection: no ORM unit of work, no
statement rebuilt per row. (Measured: this and the job keeping its rows' state in memory halve
the database's share of the per-image overhead; see ``bench/pipeline_overhead.py``.)
"""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, insert, update
from sqlalchemy.orm import Session
from sqlmodel import SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """The table a model class maps (SQLModel's ``__table__`` is missing from its type stubs)."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


@functools.cache
def insert_statement(table: Table, returning: bool) -> Any:
    stmt = insert(table)
    return stmt.returning(table.c.id) if returning else stmt


@functools.cache
def update_statement(table: Table, fields: tuple[str, ...]) -> Any:
    return update(table).where(table.c.id == bindparam("row_id")).values({f: bindparam(f"new_{f}") for f in fields})


def insert_row(s: Session, obj: Any) -> None:
    """INSERT ``obj``'s row and set its id (SQLite's last row id, or PostgreSQL's implicit RETURNING:
    an explicit RETURNING costs a result to build and read, ~0.1 ms a row on SQLite)."""
    table = table_of(type(obj))
    values = {c.name: getattr(obj, c.name) for c in table.columns if c.name != "id"}
    key = s.connection().execute(insert_statement(table, False), values).inserted_primary_key
    if key is None:  # pragma: no cover  (every table inserted here has an integer id)
        raise RuntimeError(f"the database gave no id for the new {table.name} row")
    obj.id = key[0]


def update_row(s: Session, obj: Any, *fields: str) -> None:
    """UPDATE ``fields`` of ``obj``'s row from the object."""
    table = table_of(type(obj))
    s.connection().execute(update_statement(table, fields), {"row_id": obj.id, **{f"new_{f}": getattr(obj, f) for f in fields}})


def append(s: Session, model: type[SQLModel], values: dict[str, Any]) -> None:
    """INSERT a row that nothing reads back (a call-log row, a thumbnail)."""
    s.connection().execute(insert_statement(table_of(model), False), values)


def append_all(s: Session, model: type[SQLModel], rows: list[dict[str, Any]]) -> None:
    """INSERT several rows that nothing reads back, in one statement (executemany); every row has the same keys."""
    if rows:
        s.connection().execute(insert_statement(table_of(model), False), rows)


def delete_where(s: Session, model: type[SQLModel], column: str, value: Any) -> None:
    """DELETE the rows of ``model`` whose ``column`` equals ``value``."""
    table = table_of(model)
    s.connection().execute(delete(table).where(table.c[column] == value))


def insert_or_ignore(dialect: str, table: Any, **conflict: Any) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` on ``table`` (``conflict``: e.g. ``index_elements``) for
    SQLite and PostgreSQL; None for another database. Each dialect's module is imported here, when
    used: SQLite installs never load SQLAlchemy's PostgreSQL dialect (30 ms of each start)."""
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(**conflict)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(**conflict)
    return None
