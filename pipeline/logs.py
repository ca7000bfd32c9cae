"""Logging: hierarchical ``pipeline.*`` loggers to the console and to a file per process.

The file is ``<data dir>/logs/pipeline_YYYYmmdd_HHMMSS_<pid>.log``, rotated at ``[logs]
max_bytes`` with ``backup_count`` older parts kept (``.log.1`` …); at start-up the logs of all
but the newest ``keep_files`` processes are deleted (never one whose process still runs). The
console shows warnings only while a progress bar is drawn (on a terminal), every step otherwise.
Prompts are named in log lines by their id in the prompt set, never by a database row.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.config import Settings
from pipeline.redaction import redact

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
_HANDLER_TAG = "_darkroom_handler"


class RedactSecrets(logging.Filter):
    """The second wall behind errors' own redaction: no configured secret reaches a log line,
    whether in the message, its arguments or a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


@dataclass(frozen=True)
class LogFiles:
    """Where the log files go and how big they may grow (``[logs]`` in defaults.toml)."""

    folder: Path
    max_bytes: int
    backup_count: int
    keep_files: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "LogFiles":
        table = settings.logs
        return cls(settings.logs_dir, table.max_bytes, table.backup_count, table.keep_files)


_LOG_NAME = re.compile(r"pipeline_\d{8}_\d{6}(?:_(\d+))?\.log(?:\.\d+)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, someone else's
    return True


def remove_old_logs(folder: Path, keep: int) -> int:
    """Delete the log files (and their rotated parts) of all but the ``keep`` newest processes,
    sparing any process still alive; return the number of files removed."""
    groups: dict[str, list[Path]] = {}
    for path in folder.glob("pipeline_*.log*"):
        if _LOG_NAME.fullmatch(path.name):
            groups.setdefault(path.name.split(".log")[0], []).append(path)
    removed = 0
    for base in sorted(groups, reverse=True)[keep:]:  # the names sort by time
        pid = _LOG_NAME.fullmatch(f"{base}.log").group(1)  # type: ignore[union-attr]
        if pid and _alive(int(pid)):
            continue
        for path in groups[base]:
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
    return removed


class _LogFile(logging.handlers.RotatingFileHandler):
    """The log file. Once it cannot be written (a full or read-only disk), it says so once on
    stderr and stops, instead of printing a traceback for every record."""

    broken = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
            return
        if not self.broken:
            self.broken = True
            sys.stderr.write(f"the log file {self.baseFilename} cannot be written ({error.strerror or error}); "
                             "from now on this process logs to the console only\n")
        self.setLevel(logging.CRITICAL + 1)


def setup_logging(files: LogFiles | None, *, console_level: int = logging.INFO, file_level: int = logging.INFO) -> Path | None:
    """Attach the console and (rotating) file handlers to the ``pipeline`` logger (replacing
    earlier ones); return the log file's path."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(min(console_level, file_level))
    logger.propagate = False
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level)
    console.setFormatter(logging.Formatter(FORMAT))
    console.addFilter(RedactSecrets())
    setattr(console, _HANDLER_TAG, True)
    logger.addHandler(console)
    path = None
    if files is not None:
        files.folder.mkdir(parents=True, exist_ok=True)
        path = files.folder / f"pipeline_{datetime.now():%Y%m%d_%H%M%S}_{os.getpid()}.log"
        file_handler = _LogFile(path, maxBytes=files.max_bytes, backupCount=files.backup_count, encoding="utf-8")
        file_handler.setLevel(file_level)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        file_handler.addFilter(RedactSecrets())
        setattr(file_handler, _HANDLER_TAG, True)
        logger.addHandler(file_handler)
        remove_old_logs(files.folder, files.keep_files)
    return path
