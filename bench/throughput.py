"""Benchmark: how much of a provider's capacity the pipeline uses, against the old batch design.

    python bench/throughput.py [--prompts 200] [--slots 8] [--median 1.0] [--sigma 0.5]

A loopback emulator of the fal.ai queue API (submit, status stream and polling, result, file), running in its own
process, allows ``--slots`` (C) requests at once and answers a submission beyond them with 429
and ``Retry-After`` / ``retry-after-ms`` (until the earliest slot frees). Each request takes a
log-normal time (median ``--median`` s, shape ``--sigma``) drawn from its prompt text, so both
contenders get the same latencies for the same work.

The same N prompts x 2 iterations (offline judge and refiner) go through:

1. the real pipeline: ``RunExecutor`` with the ``fal`` provider, its retry policy, breaker and
   rate limiter (``max_concurrency`` = C from configuration) and 2C prompt workers;
2. the baseline: prompts in fixed batches of 3 with ``asyncio.gather`` (the original batch
   processor's design), the same provider, judge and refiner objects.

Utilisation = ideal makespan / actual makespan, where the ideal is the least time C slots need
for the latencies the emulator actually served: max(sum of latencies / C, longest latency).
Target (issue 5): the pipeline's utilisation >= 0.90 with C = 8.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators import Emulator, Reply, Request, png  # noqa: E402

KEY = "bench-fal-key"


class CapacityFal(Emulator):
    """The fal queue API with C concurrent slots; a slot is held from submission until the result is ready."""

    def __init__(self, slots: int, median: float, sigma: float) -> None:
        super().__init__()
        self.slots, self.mu, self.sigma = slots, math.log(median), sigma
        self.jobs: dict[str, tuple[float, float]] = {}  # request id -> (submitted, latency)
        self.rejected = 0
        self.state = threading.Lock()

    def latency(self, prompt: str) -> float:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
        return math.exp(random.Random(seed).gauss(self.mu, self.sigma))

    def handle(self, req: Request) -> Reply:
        now = time.monotonic()
        if req.path == "/_jobs":
            with self.state:
                return Reply.json({"latencies": [lat for _, lat in self.jobs.values()], "rejected": self.rejected})
        if req.path == "/_reset":
            with self.state:
                self.jobs.clear()
                self.rejected = 0
            return Reply.json({})
        if req.headers.get("authorization") != f"Key {KEY}":
            return Reply.json({"detail": "Invalid API key"}, 401)
        if req.path.startswith("/files/"):
            return Reply(200, png(), {"Content-Type": "image/png"})
        m = re.fullmatch(r"/(?P<app>[^/]+/[^/]+)/requests/(?P<rid>[^/]+)(?P<rest>/status/stream|/status)?", req.path)
        if m:
            submitted, lat = self.jobs[m["rid"]]
            base = f"{self.url}/{m['app']}/requests/{m['rid']}"
            if m["rest"] == "/status/stream":  # server-sent events: the last one is sent when the result is ready
                body = (f"data: {json.dumps({'status': 'IN_PROGRESS'})}\n\n"
                        f"data: {json.dumps({'status': 'COMPLETED', 'response_url': base})}\n\n")
                return Reply(200, body, {"Content-Type": "text/event-stream"}, delay=max(0.0, submitted + lat - now))
            if m["rest"]:
                done = now >= submitted + lat
                return Reply.json({"status": "COMPLETED" if done else "IN_PROGRESS", "response_url": base}, 200 if done else 202)
            return Reply.json({"images": [{"url": f"{self.url}/files/{m['rid']}.png", "width": 64, "height": 48,
                                           "content_type": "image/png"}], "has_nsfw_concepts": [False], "seed": 1})
        if req.method == "POST":
            prompt = req.json()["prompt"]
            with self.state:
                busy = sorted(s + lat for s, lat in self.jobs.values() if s + lat > now)
                if len(busy) >= self.slots:
                    self.rejected += 1
                    wait = busy[0] - now
                    return Reply.json({"detail": "Too many concurrent requests"}, 429,
                                      **{"Retry-After": str(math.ceil(wait)), "retry-after-ms": str(int(wait * 1000) + 1)})
                rid = uuid.uuid4().hex
                self.jobs[rid] = (now, self.latency(prompt))
            app = "/".join(req.path.strip("/").split("/")[:2])
            base = f"{self.url}/{app}/requests/{rid}"
            return Reply.json({"request_id": rid, "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"})
        return Reply.json({"detail": "Not found"}, 404)


def _serve(slots: int, median: float, sigma: float, conn) -> None:  # type: ignore[no-untyped-def]
    emulator = CapacityFal(slots, median, sigma).start()
    conn.send(emulator.url)
    conn.recv()  # until told to stop


def _get(url: str) -> dict:
    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def ideal_makespan(latencies: list[float], slots: int) -> float:
    return max(sum(latencies) / slots, max(latencies))


def prompts(n: int) -> list[dict]:
    """``n`` PartiPrompts prompts (bench/data/PartiPrompts.tsv, shipped in the repository), text only."""
    sys.path.insert(0, str(ROOT / "bench"))
    from parti import parti_prompts

    return [{"id": p["id"], "prompt": p["prompt"]} for p in parti_prompts(n)]


async def baseline(settings, items: list[dict], iterations: int) -> float:  # type: ignore[no-untyped-def]
    """The original batch processor: 3 prompts at a time, each taken through all its iterations."""
    from pipeline import registry
    from pipeline.components import EvaluationRequest, GenerationRequest, RefinementRequest
    from pipeline.images import inspect_image

    provider = registry.providers.create("fal", settings)
    judge = registry.judges.create("offline", settings)
    refiner = registry.refiners.create("offline", settings)

    async def one(item: dict) -> None:
        text = item["prompt"]
        elements = tuple((await judge.decompose(text)).elements)
        for number in range(1, iterations + 1):
            image = await provider.generate(GenerationRequest(prompt=text, width=1024, height=1024, seed=1, prompt_id=item["id"]))
            info = inspect_image(image.data, claimed_mime=image.mime_type)
            judgement = await judge.evaluate(EvaluationRequest(original_prompt=item["prompt"], sent_prompt=text, elements=elements,
                                                               image=image.data, mime_type=info.mime_type,
                                                               requested_width=1024, requested_height=1024))
            if number < iterations:
                text = (await refiner.refine(RefinementRequest(original_prompt=item["prompt"], current_prompt=text, judgement=judgement,
                                                               failed_checks=(), history=()))).prompt

    t0 = time.perf_counter()
    for start in range(0, len(items), 3):
        await asyncio.gather(*(one(item) for item in items[start:start + 3]))
    return time.perf_counter() - t0


def pipeline_run(settings, items: list[dict], iterations: int, workers: int, tmp: Path) -> tuple[float, dict]:  # type: ignore[no-untyped-def]
    from sqlmodel import select

    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig, create_run, import_prompt_set
    from pipeline.runs.runner import RunExecutor
    from pipeline.store.db import open_database, session
    from pipeline.store.models import ProviderCall

    path = tmp / "set.json"
    path.write_text(json.dumps({"prompts": items}), encoding="utf-8")
    engine = open_database(settings)
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, load_file(path)),
                         RunConfig(providers=["fal"], iterations=iterations, concurrency=workers), claim=True)
        s.commit()
        run_id = run.id
    t0 = time.perf_counter()
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    elapsed = time.perf_counter() - t0
    with session(engine) as s:
        calls = s.exec(select(ProviderCall.outcome).where(ProviderCall.provider == "fal")).all()
    engine.dispose()
    counts = {o: calls.count(o) for o in sorted(set(calls))}
    return elapsed, {"completed": outcome.completed, "total": outcome.total, "calls": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="C: requests the emulated provider serves at once")
    parser.add_argument("--median", type=float, default=1.0, help="median latency of one generation, seconds")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal shape")
    parser.add_argument("--limit", type=int, help="the pipeline's configured max_concurrency for fal (default: C); set it "
                        "above C to watch the 429s and the adaptive limit at work")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(args.slots, args.median, args.sigma, child), daemon=True)
    server.start()
    url = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="darkroom-throughput-", dir=os.environ.get("BENCH_TMP")))
    config = tmp / "bench.toml"
    config.write_text(f"""
[providers.fal]
poll_initial_s = 0.02
poll_max_s = 0.05
[providers.fal.limits]
max_concurrency = {args.limit or args.slots}
""")
    os.environ.update({"DARKROOM_DATA_DIR": str(tmp / "data"), "DARKROOM_CONFIG": str(config), "FAL_KEY": KEY, "FAL_BASE_URL": url})
    os.environ.pop("DARKROOM_DATABASE_URL", None)
    import logging

    from pipeline import registry
    from pipeline.config import Settings

    logging.getLogger("pipeline").setLevel(logging.ERROR)  # the 429s are counted below, not printed one by one
    settings = Settings.from_env()
    registry.ensure_loaded()
    items = prompts(args.prompts)
    print(f"{args.prompts} prompts x {args.iterations} iterations; C = {args.slots} slots; pipeline limit "
          f"{args.limit or args.slots}; latency log-normal, "
          f"median {args.median:g} s, sigma {args.sigma:g}; {os.cpu_count()} CPU(s)")

    results = {}
    workers = 2 * max(args.slots, args.limit or 0)
    elapsed, info = pipeline_run(settings, items, args.iterations, workers, tmp)
    jobs = _get(f"{url}/_jobs")
    results["pipeline"] = (elapsed, ideal_makespan(jobs["latencies"], args.slots), len(jobs["latencies"]), jobs["rejected"])
    print(f"pipeline: {info['completed']}/{info['total']} prompts completed; fal call log {info['calls']}")
    if not args.skip_baseline:
        urllib.request.urlopen(f"{url}/_reset").read()
        elapsed = asyncio.run(baseline(settings, items, args.iterations))
        jobs = _get(f"{url}/_jobs")
        results["baseline"] = (elapsed, ideal_makespan(jobs["latencies"], args.slots), len(jobs["latencies"]), jobs["rejected"])

    print(f"{'':10} {'generations':>11} {'429s':>5} {'ideal s':>8} {'actual s':>9} {'utilisation':>11}")
    for name, (elapsed, ideal, n, rejected) in results.items():
        print(f"{name:10} {n:11d} {rejected:5d} {ideal:8.1f} {elapsed:9.1f} {ideal / elapsed:11.3f}")
    if "baseline" in results:
        u = {k: v[1] / v[0] for k, v in results.items()}
        print(f"utilisation ratio pipeline / baseline: {u['pipeline'] / u['baseline']:.2f}x "
              f"(target: pipeline >= 0.90 with C = 8: {'met' if u['pipeline'] >= 0.90 else 'NOT met'})")
    parent.send("stop")


if __name__ == "__main__":
    main()
