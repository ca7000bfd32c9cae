"""Deleting rows with everything that points at them, in one transaction.

The tables are read from the models' metadata, so a table added later that references a run,
a prompt's item or an iteration is cleared too: a nullable reference from a table that is not a
run's own record (another run's lineage, say) is set to NULL; any other referencing row goes
with what it references.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from pipeline.store import models  # noqa: F401  (registers the tables)

# A run's own records: rows of these that reference a deleted row are deleted, never kept with a NULL.
OWNED = frozenset({"run_item", "iteration", "thumbnail", "evaluation", "refinement", "rating", "review_event", "provider_call"})


def table(name: str) -> sa.Table:
    return SQLModel.metadata.tables[name]


def purge(conn: Connection, target: sa.Table, ids: sa.Select[tuple[int]]) -> None:
    """Delete the rows of ``target`` whose primary key is in ``ids`` and every row that references them."""
    key = list(target.primary_key.columns)[0]
    for child in SQLModel.metadata.sorted_tables:
        for fk in child.foreign_keys:
            if fk.column.table is not target:
                continue
            column = fk.parent
            if child is target:  # a row of the same table (lineage): keep it, forget the link
                conn.execute(sa.update(child).where(column.in_(ids)).values({column.name: None}))
            elif column.nullable and child.name not in OWNED:
                conn.execute(sa.update(child).where(column.in_(ids)).values({column.name: None}))
            else:
                child_key = list(child.primary_key.columns)[0]
                purge(conn, child, sa.select(child_key).where(column.in_(ids)))
    conn.execute(sa.delete(target).where(key.in_(ids)))
