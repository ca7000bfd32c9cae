"""A plain file host on another address (127.0.0.2): where a hostile service's "foreign_url" results point.

It serves a PNG for any GET and records every request, so a test can check which headers
(credentials) reached a host that is not the service's own.
"""

from __future__ import annotations

from . import Emulator, Reply, Request


class ImageHostEmulator(Emulator):
    def handle(self, req: Request) -> Reply:
        if req.method != "GET":
            return Reply(405, "method not allowed")
        return self.image_reply()

    def credentials_seen(self) -> list[str]:
        """Every credential header any request carried (should stay empty)."""
        with self.lock:
            return [f"{k}: {v}" for r in self.requests for k, v in r.headers.items()
                    if k in ("authorization", "x-goog-api-key", "x-api-key", "cookie")]
