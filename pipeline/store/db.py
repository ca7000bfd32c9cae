"""The database engine: one per process, SQLite in WAL mode with a busy timeout by default, or a
PostgreSQL server (``DARKROOM_DATABASE_URL=postgresql+psycopg://…``) for a team: there the
SQLite-only parts below (pragmas, file header, reserve) do not apply, migrations of processes
starting together are serialised by an advisory lock, and connecting is bounded in time.

Use one short ``with session(engine) as s:`` per unit of work and never share a Session
across threads. Queries go through SQLAlchemy/SQLModel only, nothing SQLite-specific, so
``DARKROOM_DATABASE_URL`` can point at PostgreSQL.

A database that cannot be used never shows as a traceback. :func:`open_database` checks the
data folder is writable and the SQLite file's header is whole before anything is read, and
every SQLite error later on is translated where it happens (:func:`_translate`): a full disk
becomes :class:`~pipeline.errors.DiskFull` (the run pauses), a damaged file
:class:`DatabaseDamaged` (what is wrong and how to recover), a read-only one
:class:`~pipeline.errors.StorageUnwritable`.

Beside the database lies ``darkroom.db-reserve``, :data:`RESERVE_BYTES` of space set aside while
there is room. When the disk fills, the first SQLite "disk full" gives it up, so the run can
still record that it paused (and why) instead of being left "running"; it is set aside again
at the next start with room for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from pipeline.config import Settings
from pipeline.errors import DatabaseDamaged, DiskFull, StorageError, StorageUnwritable
from pipeline.files import check_writable_folder, free_bytes, holds_files
from pipeline.store.migrations import migrate

log = logging.getLogger("pipeline.store.db")

BUSY_TIMEOUT_MS = 30_000
SQLITE_MAGIC = b"SQLite format 3\x00"
WAL_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default: the write-ahead log grows this many pages before a checkpoint
RESERVE_BYTES = 1_000_000  # room for a run to record its pause on a full disk (about 250 pages)
# SQLite's primary result codes (https://sqlite.org/rescode.html) that mean the file, not the query, is at fault
SQLITE_PERM, SQLITE_READONLY, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = 3, 8, 11, 13, 14, 26


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or another backend."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def header_problem(path: Path) -> str:
    """What is wrong with the SQLite file's header or length, "" when it looks whole (or is new).

    Cheap (reads 100 bytes): a truncated file or an overwritten header is caught before SQLite
    reads a page. Damage in the middle of the file is caught by :func:`_translate` when touched.
    """
    try:
        size = path.stat().st_size
        if size == 0:
            return ""  # a new database: open_database warns when older runs exist
        with path.open("rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return ""
    if len(head) < 100:
        return f"it is {size:,} bytes long, shorter than a SQLite header (truncated)"
    if head[:16] != SQLITE_MAGIC:
        return "its first bytes are not a SQLite header (overwritten with something else)"
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        return f"its header is damaged (page size {page_size})"
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return ""  # pages may still be in the write-ahead log: SQLite's own recovery decides
    pages = int.from_bytes(head[28:32], "big")
    counted = head[24:28] == head[92:96]  # the page count is valid only when these agree
    if size % page_size or (counted and pages * page_size > size):
        expected = f"; its header says {pages * page_size:,}" if counted else ""
        return f"it is truncated: the file holds {size:,} bytes{expected}"
    return ""


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable in WAL mode except on power loss of the last commit
    cur.close()


def _translate(path: Path, images: Path | None) -> Any:
    """A ``handle_error`` listener: SQLite errors that are about the file become storage errors."""

    def translate(context: Any) -> StorageError | None:
        code = getattr(context.original_exception, "sqlite_errorcode", None)
        if code is None:
            return None
        primary, message = code & 0xFF, str(context.original_exception)
        if primary == SQLITE_FULL:
            page_size = 4096
            try:
                with path.open("rb") as f:
                    head = f.read(18)
                page_size = int.from_bytes(head[16:18], "big") or page_size
            except OSError:
                pass
            full = DiskFull(path, needed=WAL_AUTOCHECKPOINT_PAGES * page_size, free=free_bytes(path.parent), what="the database")
            release_reserve(path)  # the next write (the run's pause) has room
            return full
        if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return DatabaseDamaged(path, f"SQLite reports \"{message}\"", images)
        if primary in (SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM):
            return StorageUnwritable(f"the database {path} cannot be written (SQLite reports \"{message}\"): make it and its "
                                     "folder writable, or point DARKROOM_DATA_DIR at a writable folder")
        return None

    return translate


def reserve_of(path: Path) -> Path:
    return path.with_name(path.name + "-reserve")


def keep_reserve(path: Path) -> None:
    """Set :data:`RESERVE_BYTES` aside beside the database, if there is room (else nothing)."""
    reserve = reserve_of(path)
    try:
        if reserve.exists() and reserve.stat().st_size >= RESERVE_BYTES:
            return
        fd = os.open(reserve, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse file
        finally:
            os.close(fd)
    except (OSError, AttributeError):  # no room (or no fallocate here): run without one
        reserve.unlink(missing_ok=True)


def release_reserve(path: Path) -> bool:
    """Give the reserve's space back to the disk; True when there was one."""
    try:
        reserve_of(path).unlink()
    except OSError:
        return False
    log.info("the disk holding %s is full: its reserve of %d bytes is given up so the run can record its pause", path, RESERVE_BYTES)
    return True


def create_db_engine(url: str, *, images: Path | None = None) -> Engine:
    """An engine for ``url``; the database itself is created and migrated by :func:`open_database`.

    ``images`` (the runs folder) is named in the message should the file turn out damaged.
    """
    path = sqlite_path(url)
    if make_url(url).get_backend_name() == "sqlite":
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        if path is not None:
            event.listen(engine, "handle_error", _translate(path, images))
        return engine
    return create_engine(server_url(url), pool_pre_ping=True, connect_args=_server_connect_args(url))


PG_CONNECT_TIMEOUT_S = 10
PG_LOCK_TIMEOUT_MS = 60_000  # a statement waiting this long for a row or table lock fails instead of hanging
MIGRATION_LOCK = 0x44524D01  # the PostgreSQL advisory lock that serialises migrations of processes starting together


def server_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the driver in requirements.txt), not SQLAlchemy's default psycopg2."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _server_connect_args(url: str) -> dict[str, Any]:
    if make_url(url).get_backend_name() != "postgresql":
        return {}
    return {"connect_timeout": PG_CONNECT_TIMEOUT_S, "options": f"-c lock_timeout={PG_LOCK_TIMEOUT_MS}"}


def _migrate(engine: Engine, url: str) -> None:
    """Bring the schema up to date; on a server, one process at a time (N workers start together)."""
    if engine.dialect.name != "postgresql":
        migrate(engine)
        return
    try:
        with engine.connect() as lock:
            lock.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
            try:
                migrate(engine)
            finally:
                lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
    except OperationalError as e:
        shown = make_url(url).render_as_string(hide_password=True)
        raise StorageError(f"the database {shown} cannot be reached: {str(e.orig).strip().splitlines()[0] if e.orig else e}; "
                           "check DARKROOM_DATABASE_URL and that the server is running") from None


def open_database(settings: Settings) -> Engine:
    """Check the data folder and the database file, create the engine and bring the schema up to date.

    Raises a :class:`~pipeline.errors.StorageError` whose message says what is wrong and what to do.
    """
    path = sqlite_path(settings.database_url)
    fresh = emptied = False
    if path is not None:
        for folder in {settings.data_dir, path.parent}:
            check_writable_folder(folder)
        problem = header_problem(path)
        if problem:
            raise DatabaseDamaged(path, problem, settings.runs_dir)
        emptied = path.exists() and path.stat().st_size == 0
        fresh = emptied or not path.exists()
    engine = create_db_engine(settings.database_url, images=settings.runs_dir)
    _migrate(engine, settings.database_url)
    if path is not None:
        keep_reserve(path)
        if fresh:
            _warn_about_unknown_runs(path, settings.runs_dir, emptied)
    return engine


def _warn_about_unknown_runs(path: Path, runs_dir: Path, emptied: bool) -> None:
    """A new database beside run folders it does not know: the old one was lost or emptied. Say so."""
    try:
        known = sorted(d.name for d in runs_dir.iterdir() if d.is_dir() and holds_files(d))
    except OSError:
        return
    if known:
        how = "was empty (0 bytes)" if emptied else "did not exist"
        shown = ", ".join(known[:10]) + (", …" if len(known) > 10 else "")
        log.warning("the database %s %s, so a new one was started; %s holds %d run folder(s) it does not know (%s). "
                    "They are left untouched, and new runs never write into them. If the old database was lost, "
                    "restore it from a backup copy to see those runs again.", path, how, runs_dir, len(known), shown)


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
