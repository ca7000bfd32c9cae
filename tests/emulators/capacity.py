"""Services with a fixed capacity, for throughput: C slots, each generation a log-normal time.

The four service models of bench/throughput.py (issue 17), each speaking a real wire format:

- ``"stream"`` (a): the fal queue API with its status stream; a submission beyond C is answered
  429 with ``Retry-After`` / ``retry-after-ms`` (until the earliest slot frees);
- ``"queue"`` (b): the fal queue API without a status stream (polling only); submissions beyond C
  wait in a first-come-first-served queue on the server, reported as ``IN_QUEUE`` with
  ``queue_position`` (0 = next), in the submit answer and in every status answer, as fal does;
- ``"poll429"`` (c): the fal queue API without a status stream, 429 beyond C;
- ``"sync"`` (d): one HTTP request per image (the user-deployed worker's format, like OpenAI,
  Gemini and Cloudflare): the answer is the image, after the generation's time; 429 beyond C.

A generation's time is drawn from its prompt text (log-normal, median ``median`` s, shape
``sigma``), so two contenders given the same prompts get the same latencies. ``served()`` is what
the service did: the latencies it served, 429s, status polls per request, connections accepted.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from . import Emulator, Reply, Request, png

KEY = "capacity-test-key-0000"
MODELS = ("stream", "queue", "poll429", "sync")


@dataclass
class Job:
    submitted: float
    start: float  # when a slot took it (later than ``submitted`` when it queued)
    latency: float
    fetched: float | None = None  # when its result was first asked for (polled models: when the client noticed)

    @property
    def done(self) -> float:
        return self.start + self.latency


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _busy_time(spans: list[tuple[float, float]], slots: int) -> float:
    """How long all ``slots`` were busy at once (the service at full capacity)."""
    events = sorted([(start, 1) for start, _ in spans] + [(done, -1) for _, done in spans])
    running, since, total = 0, 0.0, 0.0
    for at, change in events:
        if running >= slots:
            total += at - since
        running += change
        since = at
    return total


def tail(spans: list[tuple[float, float]], slots: int) -> dict[str, float]:
    """The run's tail: from the last moment all ``slots`` were busy to the last job's end
    (``actual`` s), against the least time ``slots`` need for the work left at that moment
    (``ideal`` s: the rest of each running job and every job not yet started, as one bin-packing
    bound, max(work / slots, longest piece)). ``jobs`` is how many jobs ran in the tail."""
    if not spans:
        return {"actual": 0.0, "ideal": 0.0, "jobs": 0}
    events = sorted([(start, 1) for start, _ in spans] + [(done, -1) for _, done in spans])
    running, since = 0, events[0][0]
    for at, change in events:
        if running >= slots and running + change < slots:
            since = at
        running += change
    pieces = [done - max(start, since) for start, done in spans if done > since]
    end = max(done for _, done in spans)
    return {"actual": end - since, "ideal": max(sum(pieces) / slots, max(pieces, default=0.0)), "jobs": len(pieces)}


class CapacityService(Emulator):
    def __init__(self, model: str, slots: int = 8, median: float = 1.0, sigma: float = 0.5, key: str = KEY) -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {model!r}")
        super().__init__()
        self.model, self.slots, self.mu, self.sigma, self.key = model, slots, math.log(median), sigma, key
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.jobs: dict[str, Job] = {}
            self.rejected = 0
            self.polls: dict[str, int] = {}
            self.slot_free = [0.0] * self.slots  # a heap: when each slot is next free (the queue model)
            self.requests.clear()
            self.connections = 0

    def latency(self, prompt: str) -> float:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
        return math.exp(random.Random(seed).gauss(self.mu, self.sigma))

    def served(self) -> dict[str, Any]:
        with self.lock:
            return {"latencies": [j.latency for j in self.jobs.values()], "rejected": self.rejected,
                    "polls": sum(self.polls.values()), "generations": len(self.jobs), "connections": self.connections,
                    "requests": len(self.requests), "max_queue_wait": max((j.start - j.submitted for j in self.jobs.values()), default=0.0),
                    "notice_lag": _mean([j.fetched - j.done for j in self.jobs.values() if j.fetched is not None]),
                    "first_submitted": min((j.submitted for j in self.jobs.values()), default=0.0),
                    "last_done": max((j.done for j in self.jobs.values()), default=0.0),
                    "busy": _busy_time([(j.start, j.done) for j in self.jobs.values()], self.slots),
                    "tail": tail([(j.start, j.done) for j in self.jobs.values()], self.slots)}

    # ---- the service ---------------------------------------------------------------------------------------
    def handle(self, req: Request) -> Reply:
        now = time.monotonic()
        if req.path == "/_served":
            return Reply.json(self.served())
        if req.path == "/_spans":  # every job: submitted, started, done, result first asked for (time.monotonic())
            with self.lock:
                return Reply.json([[j.submitted, j.start, j.done, j.fetched] for j in self.jobs.values()])
        if req.path == "/_reset":
            self.reset()
            return Reply.json({})
        if self.model == "sync":
            return self._sync(req, now)
        if req.headers.get("authorization") != f"Key {self.key}":
            return Reply.json({"detail": "Invalid API key"}, 401)
        if req.path.startswith("/files/"):
            return Reply(200, png(), {"Content-Type": "image/png"})
        m = re.fullmatch(r"/(?P<app>[^/]+/[^/]+)/requests/(?P<rid>[^/]+)(?P<rest>/status/stream|/status)?", req.path)
        if m:
            with self.lock:
                job = self.jobs.get(m["rid"])
                if job is None:
                    return Reply.json({"detail": "Request not found"}, 404)
                position = self._position(job, now)
                if m["rest"] == "/status":
                    self.polls[m["rid"]] = self.polls.get(m["rid"], 0) + 1
            base = f"{self.url}/{m['app']}/requests/{m['rid']}"
            if m["rest"] == "/status/stream":
                if self.model != "stream":
                    return Reply.json({"detail": "Not found"}, 404)
                body = (f"data: {json.dumps({'status': 'IN_PROGRESS'})}\n\n"
                        f"data: {json.dumps({'status': 'COMPLETED', 'response_url': base})}\n\n")
                return Reply(200, body, {"Content-Type": "text/event-stream"}, delay=max(0.0, job.done - now))
            if m["rest"]:
                if now >= job.done:
                    return Reply.json({"status": "COMPLETED", "response_url": base})
                if position is not None:
                    return Reply.json({"status": "IN_QUEUE", "queue_position": position, "response_url": base}, 202)
                return Reply.json({"status": "IN_PROGRESS", "response_url": base}, 202)
            if now < job.done:
                return Reply.json({"detail": "Request is still in progress"}, 400)
            with self.lock:
                job.fetched = job.fetched or now
            return Reply.json({"images": [{"url": f"{self.url}/files/{m['rid']}.png", "width": 64, "height": 48,
                                           "content_type": "image/png"}], "has_nsfw_concepts": [False], "seed": 1})
        if req.method == "POST":
            prompt = str((req.json() or {}).get("prompt", ""))
            with self.lock:
                job_or_wait = self._admit(prompt, now)
                if isinstance(job_or_wait, float):
                    return self._busy(job_or_wait)
                rid = uuid.uuid4().hex
                self.jobs[rid] = job_or_wait
                position = self._position(job_or_wait, now)
            app = "/".join(req.path.strip("/").split("/")[:2])
            base = f"{self.url}/{app}/requests/{rid}"
            return Reply.json({"status": "IN_QUEUE", "queue_position": position or 0, "request_id": rid, "response_url": base,
                               "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"})
        return Reply.json({"detail": "Not found"}, 404)

    def _sync(self, req: Request, now: float) -> Reply:
        if req.path != "/generate" or req.method != "POST":
            return Reply.json({"error": "not found"}, 404)
        with self.lock:
            job_or_wait = self._admit(str((req.json() or {}).get("prompt", "")), now)
            if isinstance(job_or_wait, float):
                return self._busy(job_or_wait)
            self.jobs[uuid.uuid4().hex] = job_or_wait
        return Reply(200, png(), {"Content-Type": "image/png"}, delay=job_or_wait.latency)

    def _admit(self, prompt: str, now: float) -> Job | float:
        """A new job, or (429 models, all slots busy) the seconds until the earliest slot frees. Under the lock."""
        latency = self.latency(prompt)
        if self.model == "queue":
            start = max(now, heapq.heappop(self.slot_free))
            heapq.heappush(self.slot_free, start + latency)
            return Job(now, start, latency)
        busy = sorted(j.done for j in self.jobs.values() if j.done > now)
        if len(busy) >= self.slots:
            self.rejected += 1
            return busy[0] - now
        return Job(now, now, latency)

    def _position(self, job: Job, now: float) -> int | None:
        """The job's place in the server's queue (0 = next), or None when it is running or done. Under the lock."""
        if job.start <= now:
            return None
        return sum(1 for other in self.jobs.values() if now < other.start < job.start)

    def _busy(self, wait: float) -> Reply:
        body = {"detail": "Too many concurrent requests"} if self.model != "sync" else {"error": "busy"}
        return Reply.json(body, 429, **{"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000) + 1)})
