"""Answers kept while nothing they show can have changed (a run's items page).

Each entry carries the version it was made for (:func:`pipeline.api.reads.items_version`); an
entry is used only while the version read now is the same, so a review made anywhere (the
Gallery, the API, another process) is seen by the next request.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


class PageCache:
    def __init__(self, entries: int = 64) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        self._pages: OrderedDict[Hashable, tuple[Hashable, Page]] = OrderedDict()
        self._building: dict[Hashable, asyncio.Lock] = {}

    def building(self, key: Hashable) -> asyncio.Lock:
        """The lock held while ``key``'s page is made (used on the server's event loop only)."""
        if len(self._building) > 4 * self.entries:
            self._building = {k: lock for k, lock in self._building.items() if lock.locked()}
        return self._building.setdefault(key, asyncio.Lock())

    def get(self, key: Hashable, version: Hashable) -> Page | None:
        """The kept page of ``key`` if it was made for ``version``."""
        with self._lock:
            found = self._pages.get(key)
            if found is None or found[0] != version:
                return None
            self._pages.move_to_end(key)
            return found[1]

    def put(self, key: Hashable, version: Hashable, page: Page) -> None:
        with self._lock:
            self._pages[key] = (version, page)
            self._pages.move_to_end(key)
            while len(self._pages) > self.entries:
                self._pages.popitem(last=False)


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


GZIP_LEVEL = 6  # once per page made; JSON of 100 items shrinks about eightfold


@dataclass(frozen=True)
class Page:
    """A JSON body, its ETag, and the same gzipped (the bytes most clients ask for, made once)."""

    body: bytes
    tag: str
    gzipped: bytes

    @classmethod
    def of(cls, body: bytes) -> "Page":
        return cls(body, etag(body), gzip.compress(body, GZIP_LEVEL, mtime=0))

    @property
    def gzip_tag(self) -> str:
        return self.tag[:-1] + '-gzip"'


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (``gzip`` or ``*``, not with ``q=0``)."""
    for part in header.lower().split(","):
        name, _, params = part.partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=")
            return not (params.strip().startswith("q=") and q.replace(".", "", 1).isdigit() and float(q) == 0)
    return False
