"""Answers kept while nothing they show can have changed (a stopped run's items, until a review).

Each entry carries the version it was made for (:func:`pipeline.review.items.items_version`);
an entry is used only while the version read now is the same, so a review made anywhere (the
Gallery, the API, another process) is seen by the next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable


class PageCache:
    def __init__(self, entries: int = 64) -> None:
        self.entries = entries
        self._lock = threading.Lock()
        self._pages: OrderedDict[Hashable, tuple[Hashable, tuple[bytes, str]]] = OrderedDict()
        self._building: dict[Hashable, asyncio.Lock] = {}

    def building(self, key: Hashable) -> asyncio.Lock:
        """The lock held while ``key``'s page is made (used on the server's event loop only)."""
        if len(self._building) > 4 * self.entries:
            self._building = {k: lock for k, lock in self._building.items() if lock.locked()}
        return self._building.setdefault(key, asyncio.Lock())

    def get(self, key: Hashable, version: Hashable) -> tuple[bytes, str] | None:
        """The kept (body, ETag) of ``key`` if it was made for ``version``."""
        with self._lock:
            found = self._pages.get(key)
            if found is None or found[0] != version:
                return None
            self._pages.move_to_end(key)
            return found[1]

    def put(self, key: Hashable, version: Hashable, page: tuple[bytes, str]) -> None:
        with self._lock:
            self._pages[key] = (version, page)
            self._pages.move_to_end(key)
            while len(self._pages) > self.entries:
                self._pages.popitem(last=False)


def etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
