"""The fal.ai queue API with a capacity and a latency, counting what a paying customer would be billed.

A submission holds one of ``slots`` until its result is ready (``latency(prompt)`` seconds later);
one beyond them gets 429 with ``Retry-After`` / ``retry-after-ms``. The emulator keeps, per request
id, what was submitted, and the most submissions it ever had in flight at once (``peak``): the
worker tests check both against the database (every finished step paid once; the shared
``max_concurrency`` held), and ``bench/workers.py`` measures utilisation from them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import uuid

from . import Emulator, Reply, Request, png

KEY = "fal-capacity-test-key"


class CapacityFal(Emulator):
    def __init__(self, slots: int, median_s: float, sigma: float = 0.0) -> None:
        super().__init__()
        self.slots, self.mu, self.sigma = slots, math.log(median_s), sigma
        self.jobs: dict[str, tuple[float, float, str]] = {}  # request id -> (submitted, latency, prompt)
        self.rejected = 0
        self.peak = 0
        self.state = threading.Lock()

    def latency(self, prompt: str) -> float:
        if not self.sigma:
            return math.exp(self.mu)
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
        return math.exp(random.Random(seed).gauss(self.mu, self.sigma))

    def summary(self) -> dict[str, object]:
        with self.state:
            return {"submitted": len(self.jobs), "latencies": [lat for _, lat, _ in self.jobs.values()],
                    "first": min((s for s, _, _ in self.jobs.values()), default=0.0),
                    "last": max((s + lat for s, lat, _ in self.jobs.values()), default=0.0),
                    "rejected": self.rejected, "peak": self.peak, "request_ids": sorted(self.jobs)}

    def handle(self, req: Request) -> Reply:
        now = time.monotonic()
        if req.path == "/_summary":
            return Reply.json(self.summary())
        if req.path == "/_reset":
            with self.state:
                self.jobs.clear()
                self.rejected = self.peak = 0
            return Reply.json({})
        if req.headers.get("authorization") != f"Key {KEY}":
            return Reply.json({"detail": "Invalid API key"}, 401)
        if req.path.startswith("/files/"):
            return Reply(200, png(), {"Content-Type": "image/png"})
        m = re.fullmatch(r"/(?P<app>[^/]+/[^/]+)/requests/(?P<rid>[^/]+)(?P<rest>/status/stream|/status)?", req.path)
        if m:
            with self.state:
                job = self.jobs.get(m["rid"])
            if job is None:
                return Reply.json({"detail": "Request not found"}, 404)
            submitted, lat, _ = job
            base = f"{self.url}/{m['app']}/requests/{m['rid']}"
            if m["rest"] == "/status/stream":  # server-sent events: the last one when the result is ready
                body = (f"data: {json.dumps({'status': 'IN_PROGRESS'})}\n\n"
                        f"data: {json.dumps({'status': 'COMPLETED', 'response_url': base})}\n\n")
                return Reply(200, body, {"Content-Type": "text/event-stream"}, delay=max(0.0, submitted + lat - now))
            if m["rest"]:
                done = now >= submitted + lat
                return Reply.json({"status": "COMPLETED" if done else "IN_PROGRESS", "response_url": base}, 200 if done else 202)
            return Reply.json({"images": [{"url": f"{self.url}/files/{m['rid']}.png", "width": 64, "height": 48,
                                           "content_type": "image/png"}], "has_nsfw_concepts": [False], "seed": 1})
        if req.method == "POST":
            prompt = str(req.json().get("prompt", ""))
            with self.state:
                busy = sorted(s + lat for s, lat, _ in self.jobs.values() if s + lat > now)
                if len(busy) >= self.slots:
                    self.rejected += 1
                    wait = busy[0] - now
                    return Reply.json({"detail": "Too many concurrent requests"}, 429,
                                      **{"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000) + 1)})
                rid = uuid.uuid4().hex
                self.jobs[rid] = (now, self.latency(prompt), prompt)
                self.peak = max(self.peak, len(busy) + 1)
            app = "/".join(req.path.strip("/").split("/")[:2])
            base = f"{self.url}/{app}/requests/{rid}"
            return Reply.json({"request_id": rid, "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"})
        return Reply.json({"detail": "Not found"}, 404)
