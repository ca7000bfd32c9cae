"""Logging: hierarchical ``pipeline.*`` loggers to the console and to a file per process.

The file is ``<data dir>/logs/pipeline_YYYYmmdd_HHMMSS.log``; the console shows warnings only
while a progress bar is drawn (on a terminal), every step otherwise.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
_HANDLER_TAG = "_darkroom_handler"


def setup_logging(logs_dir: Path | None, *, console_level: int = logging.INFO, file_level: int = logging.INFO) -> Path | None:
    """Attach the console and file handlers to the ``pipeline`` logger (replacing earlier ones)."""
    logger = logging.getLogger("pipeline")
    logger.setLevel(min(console_level, file_level))
    logger.propagate = False
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(h)
        h.close()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(console_level)
    console.setFormatter(logging.Formatter(FORMAT))
    setattr(console, _HANDLER_TAG, True)
    logger.addHandler(console)
    path = None
    if logs_dir is not None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        path = logs_dir / f"pipeline_{datetime.now():%Y%m%d_%H%M%S}.log"
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setLevel(file_level)
        file_handler.setFormatter(logging.Formatter(FORMAT))
        setattr(file_handler, _HANDLER_TAG, True)
        logger.addHandler(file_handler)
    return path
