"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Each write goes to a temporary file in the destination folder (so the final rename stays on
one file system), is flushed to disk, then renamed over the destination with ``os.replace``.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

TEMP_PREFIX = ".tmp-"
_counter = itertools.count()
_counter_lock = threading.Lock()


def _open_temp(folder: Path, name: str) -> tuple[int, str]:
    """Create a new temporary file beside the destination (unique per process, thread and call).

    ``tempfile.mkstemp`` would do, but its random names cost more than the write itself here.
    """
    with _counter_lock:
        n = next(_counter)
    tmp_name = str(folder / f"{TEMP_PREFIX}{os.getpid()}-{n}-{name}")
    return os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), tmp_name


@contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only when the ``with`` block ends without error.

    ``durable`` also fsyncs before the rename. On any error, or Ctrl-C, the temporary file is
    removed and ``path`` keeps whatever it held before.
    """
    try:
        fd, tmp_name = _open_temp(path.parent, path.name)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _open_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` also fsyncs before the rename."""
    with atomic_file(path, durable=durable) as f:
        f.write(data)


def atomic_write_json(path: Path, payload: Any, *, durable: bool = False) -> None:
    """JSON sidecars mirror the database, so a lost one is rewritten on resume: no fsync by default."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


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
