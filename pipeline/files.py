"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Each write goes to a temporary file in the destination folder (so the final rename stays on
one file system), is flushed to disk, then renamed over the destination with ``os.replace``.

A write that fails because the disk is full or the folder is read-only raises a
:class:`StorageError` naming the path (and, for a full disk, the space needed and free), never
a bare ``OSError``: the runner pauses a run on :class:`DiskFull`, and the CLI and the dashboard
show the message as it is.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline.errors import DISK_FULL_PREFIX, DiskFull, StorageError, StorageUnwritable

TEMP_PREFIX = ".tmp-"
_counter = itertools.count()
_counter_lock = threading.Lock()

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_UNWRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def free_bytes(path: Path) -> int | None:
    """Space free to us on the disk holding ``path`` (its nearest existing folder), or None."""
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def storage_error(e: OSError, path: Path | str | None = None, *, needed: int | None = None) -> StorageError | None:
    """``e`` as a :class:`StorageError` when the disk is full or the place is not writable, else None."""
    where = Path(path if path is not None else (e.filename or "."))
    if e.errno in _FULL_ERRNOS:
        return DiskFull(where, needed=needed, free=free_bytes(where))
    if e.errno in _UNWRITABLE_ERRNOS:
        reason = "the file system is read-only" if e.errno == errno.EROFS else "permission denied"
        return StorageUnwritable(f"cannot write {where}: {reason}. Darkroom must write there: make it writable, or choose "
                                 "another folder (DARKROOM_DATA_DIR for the data folder, --output for a run's results)")
    return None


def is_disk_full_pause(error: str) -> bool:
    """Whether a paused run's error says a full disk paused it (resume needs space, not a budget)."""
    return error.startswith(DISK_FULL_PREFIX)


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be made in it; :class:`StorageError` if not."""
    probe = folder / f"{TEMP_PREFIX}probe-{os.getpid()}-{threading.get_ident()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        translated = storage_error(e, folder)
        if translated is None:
            raise
        raise translated from e


def holds_files(folder: Path) -> bool:
    """Whether any file lives below ``folder`` (stops at the first one found)."""
    return folder.is_dir() and any(p.is_file() for p in folder.rglob("*"))


def unused_folder(folder: Path, taken: Callable[[Path], bool] = lambda _: False) -> Path:
    """``folder`` when it holds no file (and is not ``taken``); else the first of ``folder-2``,
    ``folder-3``, … that holds none.

    A database that was deleted or emptied starts its run ids at 1 again; its new runs must
    never write over the images of the old ones still on disk.
    """
    candidate, n = folder, 1
    while holds_files(candidate) or taken(candidate):
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def _open_temp(folder: Path, name: str) -> tuple[int, str]:
    """Create a new temporary file beside the destination (unique per process, thread and call).

    ``tempfile.mkstemp`` would do, but its random names cost more than the write itself here.
    """
    with _counter_lock:
        n = next(_counter)
    tmp_name = str(folder / f"{TEMP_PREFIX}{os.getpid()}-{n}-{name}")
    return os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp_name


@contextmanager
def atomic_file(path: Path, *, durable: bool = True, size_hint: int | None = None) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the ``with`` block ends without error.

    ``durable`` also fsyncs before the rename. On any error, or Ctrl-C, the temporary file is
    removed and ``path`` keeps whatever it held before. A full disk raises :class:`DiskFull`
    (``size_hint``: the bytes the write needs, for its message), a read-only folder
    :class:`StorageUnwritable`.
    """
    try:
        try:
            fd, tmp_name = _open_temp(path.parent, path.name)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = _open_temp(path.parent, path.name)
    except OSError as e:
        translated = storage_error(e, path, needed=size_hint)
        if translated is None:
            raise
        raise translated from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as e:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        translated = storage_error(e, path, needed=size_hint) if isinstance(e, OSError) else None
        if translated is not None:
            raise translated from e
        raise


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` also fsyncs before the rename."""
    with atomic_file(path, durable=durable, size_hint=len(data)) as f:
        f.write(data)


def json_bytes(payload: Any) -> bytes:
    """A sidecar's bytes: indented UTF-8 JSON, one newline at the end (the same in a folder or a bucket)."""
    return (json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def atomic_write_json(path: Path, payload: Any, *, durable: bool = False) -> None:
    """JSON sidecars mirror the database, so a lost one is rewritten on resume: no fsync by default."""
    atomic_write_bytes(path, json_bytes(payload), durable=durable)


def leftover_temp_files(root: Path) -> list[Path]:
    """Temporary files a crash may have left behind (they are never the real output)."""
    return sorted(p for p in root.rglob(f"{TEMP_PREFIX}*") if p.is_file())


def remove_leftover_temp_files(root: Path) -> int:
    removed = 0
    if root.exists():
        for p in leftover_temp_files(root):
            p.unlink(missing_ok=True)
            removed += 1
    return removed
