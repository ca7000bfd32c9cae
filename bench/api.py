"""Benchmark: the REST API under 16 concurrent clients, and a streamed export against reading the files.

    python bench/api.py [--clients 16] [--requests 3000] [--export-images 2000] [--image-kb 60] [--review-every-ms 100]
                        [--server-args "--http h11 --loop asyncio"]

Seeds a temporary data folder directly (no generation: this measures the API): run 1 with 100
prompts x 2 iterations (judge scores, refiner rationales, 10 KB thumbnails, three reviewers'
ratings) and run 2 with ``--export-images`` image files on disk. Starts ``python -m pipeline
serve`` as its own process (as a user does), then from this process, with ``--clients`` clients
at once, prints requests per second and p50/p99 latency of

- ``GET /v1/runs/1/items`` (100 items, each with its iterations, diffs and reviews)
- ``GET /v1/images/{id}/thumbnail``
- ``GET /v1/runs/1/items`` again while another client writes a review every ``--review-every-ms``
  (each review changes the page, so the next request builds it again: cache misses in the mix)

and the throughput of ``GET /v1/runs/2/export.zip?selection=all`` against reading the same files
three ways: in this process (Python, into memory), ``cat`` to /dev/null, and ``cat`` through a
pipe to a reader (bytes handed to another process, as the export hands them to curl). Cold first,
as an export usually is (a run's images exported hours after they were made are mostly not in
the page cache): the files are evicted from it (``posix_fadvise(POSIX_FADV_DONTNEED)``, no root
needed) before every timed repetition of every test, so the server and the readers all read the
disk; then warm, from the page cache (each test run once before it is timed). The clients are
``ab`` (apache2-utils) and ``curl`` when installed (C programs, so the figures are the server's),
else httpx; requests say ``Accept-Encoding: gzip``, as httpx, requests and browsers do (the items
page is sent gzipped).

The machine is shared, so wall-clock latency depends on what else runs: each figure is printed
with the load average, and with the server process's CPU time per request (its CPU time over
the test / requests), which does not.

Targets (issue 15): p99 <= 50 ms for both with SQLite; the export >= 0.8x reading the files.
Set BENCH_TMP to choose where the data goes (default: the system temp folder). ``--server-args``
are added to ``serve`` (``--http h11 --loop asyncio``: without httptools and uvloop, to compare);
``--export-images 0`` skips the export; ``--only export`` (or ``--only api``) runs one part.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed(engine, data_dir: Path, export_images: int, image_kb: int) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    from pipeline.store.models import Evaluation, Iteration, Prompt, PromptSet, Rating, Refinement, Run, RunItem, Thumbnail, utcnow

    rng = random.Random(15)
    now = utcnow()
    thumb = bytes(rng.getrandbits(8) for _ in range(10_000))
    runs = {1: 100, 2: export_images // 2}
    prompts, items, its, evals, thumbs, refinements, ratings = [], [], [], [], [], [], []
    pid = it_id = 0
    for run_id, n in runs.items():
        for position in range(n):
            pid += 1
            prompts.append({"id": pid, "prompt_set_id": run_id, "position": position, "key": f"p{position:05d}", "title": f"Prompt {pid}",
                            "scene": "a hill at dusk", "mood": "calm", "prompt": f"A lantern number {pid} on a hill", "negative_prompt": "",
                            "tags": ["bench"], "meta": {}})
            scores = [round(rng.uniform(2, 9.8), 2) for _ in range(2)]
            items.append({"id": pid, "run_id": run_id, "prompt_id": pid, "status": "completed", "final_iteration": 1 + scores.index(max(scores)),
                          "best_score": max(scores), "cost_usd": 0.0, "error_kind": "", "error_message": "", "stop_reason": "iterations_done"})
            for number, score in enumerate(scores, 1):
                it_id += 1
                its.append({"id": it_id, "run_item_id": pid, "number": number,
                            "prompt_text": f"A lantern number {pid} on a hill, {'warm golden light, ' * number}sharp detail",
                            "negative_prompt": "", "provider": "offline", "model": "offline-render-v1", "seed": pid, "parameters": {},
                            "status": "ok", "image_path": f"results/p{position:05d}/iteration_{number}.jpg", "mime_type": "image/jpeg",
                            "width": 1024, "height": 1024, "sha256": f"{it_id:064x}", "byte_size": image_kb * 1000, "error_kind": "",
                            "error_message": "", "started_at": now, "finished_at": now, "routing": {}, "request_id": "", "source_url": "",
                            "service_meta": {}})
                evals.append({"iteration_id": it_id, "judge": "offline", "model": "", "overall_score": score,
                              "criteria": {"composition": score, "colour": score}, "checks": [], "issues": [{"issue": "soft focus"}],
                              "top_suggestion": "sharper", "raw_response": "", "created_at": now, "routing": {}})
                thumbs.append({"iteration_id": it_id, "mime_type": "image/jpeg", "width": 320, "height": 320, "data": thumb})
                for who, share in (("ana", 0.6), ("bo", 0.4), ("cy", 0.2)):
                    if rng.random() < share:
                        decision = rng.choice(["approved", "rejected", "none"])
                        ratings.append({"iteration_id": it_id, "reviewer": who, "stars": rng.choice([None, 1, 2, 3, 4, 5]), "decision": decision,
                                        "note": "ok", "rated_at": now, "decided_at": None if decision == "none" else now})
            refinements.append({"run_item_id": pid, "from_iteration": 1, "new_prompt": its[-1]["prompt_text"], "refiner": "offline",
                                "model": "", "rationale": "warmer light", "edits": [], "created_at": now, "routing": {}})
    with engine.begin() as conn:
        conn.execute(sa.insert(PromptSet), [{"id": r, "name": f"bench {r}", "source": "", "sha256": str(r), "prompt_count": n, "meta": {},
                                             "created_at": now} for r, n in runs.items()])
        conn.execute(sa.insert(Prompt), prompts)
        conn.execute(sa.insert(Run), [{"id": r, "prompt_set_id": r, "name": f"bench {r}", "status": "completed", "config": {},
                                       "output_dir": f"runs/{r}", "total": n, "completed": n, "created_at": now, "started_at": now,
                                       "finished_at": now} for r, n in runs.items()])
        conn.execute(sa.insert(RunItem), items)
        conn.execute(sa.insert(Iteration), its)
        conn.execute(sa.insert(Evaluation), evals)
        conn.execute(sa.insert(Thumbnail), thumbs)
        conn.execute(sa.insert(Refinement), refinements)
        conn.execute(sa.insert(Rating), ratings)
    blob = bytes(rng.getrandbits(8) for _ in range(image_kb * 1000))
    for it in its[200:]:  # run 2's images, on disk
        path = data_dir / "runs" / "2" / it["image_path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob[: len(blob) - it["id"] % 100])


async def load(base: str, token: str, paths: list[str], clients: int) -> tuple[float, list[float]]:
    """``paths`` spread over ``clients`` concurrent connections; (requests/s, latencies in ms)."""
    latencies: list[float] = []
    queue = list(reversed(paths))

    async def worker(c: httpx.AsyncClient) -> None:
        while queue:
            path = queue.pop()
            t = time.perf_counter()
            r = await c.get(path)
            latencies.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])

    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as c:
        await asyncio.gather(*(c.get(paths[i % len(paths)]) for i in range(clients)))  # open the connections, warm up
        t = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(clients)))
        elapsed = time.perf_counter() - t
    return len(paths) / elapsed, latencies


def ab_load(base: str, token: str, path: str, requests: int, clients: int, changing: bool = False) -> tuple[float, float, float]:
    """ApacheBench (a C client, keep-alive): (requests/s, p50 ms, p99 ms) with the server, not the client, as the limit."""
    out = subprocess.run(["ab", "-q", "-k", "-n", str(requests), "-c", str(clients), "-H", f"Authorization: Bearer {token}",
                          "-H", "Accept-Encoding: gzip", f"{base}{path}"],  # as httpx, requests and browsers send it
                         capture_output=True, text=True, timeout=600, check=True).stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    length = re.search(r"Length: (\d+)", out)  # ab counts a body whose length changed (a page after a review) as failed
    assert failed and int(failed.group(1)) == (int(length.group(1)) if length and changing else 0) and not non2xx, out
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"\s50%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"\s99%\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99


class Reviewer:
    """Another client: a review of run 1's images every ``every_ms`` (stars cycling, so each one changes the page)."""

    def __init__(self, base: str, token: str, every_ms: float) -> None:
        self.written, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base, token, every_ms / 1000), daemon=True)
        self._thread.start()

    def _run(self, base: str, token: str, every: float) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
            while not self._stop.wait(every):
                r = c.put(f"/v1/images/{1 + self.written % 200}/review", json={"stars": 1 + self.written % 5})
                assert r.status_code == 200, r.text[:200]
                self.written += 1

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(60)
        return self.written


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used: the server's cost per request, whatever else the machine runs."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--export-images", type=int, default=2000)
    parser.add_argument("--image-kb", type=int, default=60)
    parser.add_argument("--review-every-ms", type=float, default=100.0)
    parser.add_argument("--server-args", default="", help='added to "python -m pipeline serve"')
    parser.add_argument("--only", choices=("api", "export"), help="run only the API requests or only the export")
    args = parser.parse_args()
    if args.only == "api":
        args.export_images = 0

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        data = Path(tmp) / "data"
        config = Path(tmp) / "bench.toml"
        config.write_text("[api]\nrate_per_s = 1000000.0\nrate_burst = 1000000\n")  # the bench measures the API, not its rate limit
        env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
        env.update({"DARKROOM_DATA_DIR": str(data), "DARKROOM_CONFIG": str(config), "PYTHONPATH": str(ROOT)})
        os.environ.update({"DARKROOM_DATA_DIR": str(data), "DARKROOM_CONFIG": str(config)})
        from pipeline.api.tokens import create_token
        from pipeline.config import Settings
        from pipeline.store.db import open_database

        engine = open_database(Settings.from_env())
        t = time.perf_counter()
        seed(engine, data, args.export_images, args.image_kb)
        _, token = create_token(engine, "bench", "reviewer")
        _, writer = create_token(engine, "bench-writer", "reviewer")
        engine.dispose()
        print(f"seeded run 1 (100 prompts x 2 iterations) and run 2 ({args.export_images:,} images of ~{args.image_kb} KB on disk) "
              f"in {time.perf_counter() - t:.1f} s")

        with socket_port() as port:
            pass
        server = subprocess.Popen([sys.executable, "-m", "pipeline", "serve", "--port", str(port), *shlex.split(args.server_args)],
                                  cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {server.stderr.read().decode() if server.stderr else ''}")
                time.sleep(0.2)
            client = "ab (ApacheBench, keep-alive)" if shutil.which("ab") else "httpx (install apache2-utils for ab: a C client)"
            requests = "" if args.only == "export" else (f"; {args.clients} concurrent clients, {args.requests} requests each test; "
                                                            f"client: {client}")
            print(f"python -m pipeline serve {args.server_args} (one process, SQLite){requests}; load average {load_average()}")
            every = f"items, a review every {args.review_every_ms:g} ms"
            for label, paths in () if args.only == "export" else (("GET /v1/runs/1/items (100 items)", ["/v1/runs/1/items"] * args.requests),
                                 ("GET /v1/images/{id}/thumbnail", [f"/v1/images/{1 + i % 200}/thumbnail" for i in range(args.requests)]),
                                 (every, ["/v1/runs/1/items"] * args.requests)):
                reviews = Reviewer(base, writer, args.review_every_ms) if label == every else None
                cpu = cpu_seconds(server.pid)
                if shutil.which("ab"):
                    rps, p50, p99 = ab_load(base, token, paths[0], args.requests, args.clients, changing=reviews is not None)
                else:
                    rps, lat = asyncio.run(load(base, token, paths, args.clients))
                    p50, p99 = pct(lat, 50), pct(lat, 99)
                per = (cpu_seconds(server.pid) - cpu) / args.requests * 1000
                written = reviews.stop() if reviews is not None else 0
                print(f"  {label:<36} {rps:8.1f} req/s   wall p50 {p50:6.1f} ms   p99 {p99:6.1f} ms   "
                      f"server CPU {per:5.2f} ms/request (one free core: ~{1000 / per:,.0f} req/s; 16 waiting: ~{16 * per:.0f} ms each)")
                if reviews is not None:
                    print(f"  {'':<36} {written} reviews written meanwhile (each a rebuilt page; CPU per request includes them)")
                print(f"  {'':<36} load average {load_average()}")
            if args.export_images:
                export(base, token, data / "runs" / "2", server.pid)
        finally:
            server.terminate()
            server.wait(30)


def export(base: str, token: str, folder: Path, pid: int) -> None:
    files = sorted(folder.rglob("*.jpg"))
    listing = folder.parent / "files.txt"
    listing.write_text("".join(f"{f}\n" for f in files))

    def read_all() -> int:  # in this process, into memory: no copy to another process
        total = 0
        for f in files:
            with open(f, "rb") as src:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
        return total

    def cat(to_pipe: bool) -> int:  # `cat` of the same files, to /dev/null or through a pipe to a reader (as a socket to curl)
        script = 'xargs -d "\\n" cat < "$1" | cat > /dev/null' if to_pipe else 'xargs -d "\\n" cat < "$1" > /dev/null'
        subprocess.run(["sh", "-c", script, "sh", str(listing)], check=True, timeout=300)
        return sum(f.stat().st_size for f in files)

    def stream() -> int:
        if shutil.which("curl"):  # a C client: the figure is the server's
            out = subprocess.run(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}", "-H", f"Authorization: Bearer {token}",
                                  f"{base}/v1/runs/2/export.zip?selection=all"], capture_output=True, text=True, timeout=300, check=True)
            return int(float(out.stdout))
        total = 0
        with httpx.stream("GET", f"{base}/v1/runs/2/export.zip", params={"selection": "all"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=300) as r:
            assert r.status_code == 200, r.read()[:300]
            for chunk in r.iter_bytes(1 << 20):
                total += len(chunk)
        return total

    def build_file() -> int:  # the CLI's and the dashboard's export: the same zip, written to a file
        from pipeline.config import Settings
        from pipeline.review.export import build_zip
        from pipeline.store.db import open_database, session

        engine = open_database(Settings.from_env())
        dest = folder.parent / "cli-export.zip"
        try:
            with session(engine) as s:
                return build_zip(s, Settings.from_env(), [2], dest, selection="all").bytes_written
        finally:
            engine.dispose()
            dest.unlink(missing_ok=True)

    runs = 5
    tests = (("read the files (Python)", read_all), ("cat > /dev/null", lambda: cat(False)), ("cat | cat > /dev/null", lambda: cat(True)),
             ("streamed export.zip", stream), ("CLI export to a file", build_file))
    total = sum(f.stat().st_size for f in files)
    print(f"export of {len(files):,} images ({total / 1e6:.1f} MB), median of {runs} runs of each test:")
    stream()  # the server's first export (its code and database warm), not timed
    for cold in (True, False):
        if not cold:
            for _, fn in tests[:4]:  # warm the page cache and the server
                fn()
        results, server_cpu = {}, 0.0
        for name, fn in tests:
            times = []
            cpu = cpu_seconds(pid)
            for _ in range(runs):
                if cold:
                    evict(files)
                t = time.perf_counter()
                size = fn()
                times.append(time.perf_counter() - t)
            results[name] = (size, statistics.median(times))
            if name.startswith("streamed"):
                server_cpu = (cpu_seconds(pid) - cpu) / runs
        print(f"  {'COLD: the files evicted from the page cache before every run' if cold else 'WARM: the files in the page cache'}"
              f" (load average {load_average()}):")
        for name, (size, seconds) in results.items():
            print(f"    {name:<24} {size / 1e6:8.1f} MB in {seconds:6.3f} s = {size / 1e6 / seconds:7.1f} MB/s")
        streamed = results["streamed export.zip"][0] / results["streamed export.zip"][1]
        for name in ("read the files (Python)", "cat > /dev/null", "cat | cat > /dev/null"):
            print(f"    streamed / {name:<24} = {streamed / (results[name][0] / results[name][1]):.2f}x")
        print(f"    the server spent {server_cpu * 1000:.0f} ms CPU per export ({results['streamed export.zip'][0] / 1e6 / server_cpu:.0f} MB "
              f"per CPU-second; reading the files alone: {read_cpu(read_all, files if cold else None) * 1000:.0f} ms CPU in Python)")


def evict(files: list[Path]) -> None:
    """Drop the files from the page cache (written back first: a dirty page is not dropped), so the next read is from the disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_cpu(fn, cold: list[Path] | None) -> float:  # type: ignore[no-untyped-def]
    if cold is not None:
        evict(cold)
    t = time.process_time()
    fn()
    return time.process_time() - t


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg()) + f" (1/5/15 min) on {os.cpu_count()} CPUs"


class socket_port:
    """A free loopback port (closed again before the server binds it)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.sock.close()


if __name__ == "__main__":
    main()
