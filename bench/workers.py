"""Benchmark: worker processes sharing runs through PostgreSQL, against a provider of fixed capacity.

    python bench/workers.py [--prompts 2000] [--iterations 2] [--workers 1,2,4,8] [--slots 64]
                            [--median 1.0] [--sigma 0.5] [--kill 4] [--count 50]

A loopback emulator of fal's queue API (tests/emulators/fal_capacity.py, in its own process)
serves ``--slots`` requests at once with log-normal latency (median ``--median`` s); the provider's
shared ``max_concurrency`` is set to the same. For each worker count N, a fresh PostgreSQL
database (on ``DARKROOM_TEST_PG_URL``, default 127.0.0.1:5432) gets one queued run of
``--prompts`` PartiPrompts × ``--iterations`` (fal, offline judge and refiner), and N
``python -m pipeline worker --until-idle`` processes execute it, 2 × slots / N prompts each at
once. Printed per N:

- throughput (images/s) and provider utilisation: the ideal makespan for the slots and the
  latencies served, max(sum / slots, longest), over the actual first-submission-to-last-result time;
- CPU seconds the workers used per image and as a share of the machine's cores (near 100%:
  the cores, not the provider, are the limit);
- the database per image: transactions, rows written and read, bytes the database grew.

``--kill N`` runs the N-worker case again and kill -9s one worker a third of the way in: every
prompt must complete, and the emulator's submissions must equal the stored iterations plus at
most the killed worker's calls in flight (submitted, not yet recorded: paid once, lost).
``--count P`` runs P prompts through one in-process worker with a statement counter on its engine:
the exact SQL statements per image.

Past this machine, on paper (from the figures measured here: workers' CPU 40–65 ms per image with
the offline judge; per image 28.6 statements, ~22 transactions, ~15 rows written, 5–7 KB):

- 64 workers on 8 machines of 8 cores: CPU allows ≈ 8 × 8 / 0.05 s ≈ 1,000 images/s, so the
  providers decide. One provider of 64 slots at 1.13 s mean latency gives ≈ 57 images/s, however
  many workers; 64 workers pay off only with ≈ 64 × 16 = 1,000 slots across the providers
  (≈ 900 images/s at 1.13 s), or with slower, remote judges whose time is not CPU.
- The database at 900 images/s: ≈ 26,000 statements/s, ≈ 20,000 commits/s, ≈ 13,500 rows written/s
  and ≈ 5 MB/s of table growth (≈ 19 GB/hour, thumbnails most of it; WAL about twice that). That
  is past what one PostgreSQL primary commits comfortably with synchronous_commit on (~10,000 small
  commits/s on NVMe): batch a step's rows into fewer commits, move thumbnails to object storage,
  and put PgBouncer (transaction pooling) in front of 64 workers × their pools.
- The claim is two statements per prompt (a partial index keeps it off finished rows); a shared
  provider slot is two short transactions per call plus polling while all are taken, which at
  1,000 waiting calls is the next cost to cut (LISTEN/NOTIFY on release instead of polling).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from tests.emulators.fal_capacity import KEY, CapacityFal  # noqa: E402

SERVER = os.environ.get("DARKROOM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _serve(slots: int, median: float, sigma: float, conn: Any) -> None:
    emulator = CapacityFal(slots, median, sigma).start()
    conn.send(emulator.url)
    conn.recv()


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


class Database:
    """A fresh database on the server for one measurement."""

    def __init__(self, tag: str) -> None:
        self.name = f"darkroom_bench_{os.getpid()}_{tag}"
        self.admin = sa.create_engine(SERVER, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with self.admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            c.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        self.url = make_url(SERVER).set(database=self.name).render_as_string(hide_password=False)

    def stats(self) -> dict[str, int]:
        with self.admin.connect() as c:
            row = c.execute(sa.text(
                "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched, pg_database_size(datname) "
                "FROM pg_stat_database WHERE datname = :n"), {"n": self.name}).one()
        return dict(zip(("transactions", "inserted", "updated", "deleted", "read", "bytes"), (int(v) for v in row), strict=True))

    def drop(self) -> None:
        with self.admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


def prompts(n: int) -> list[dict[str, str]]:
    sys.path.insert(0, str(ROOT / "bench"))
    from parti import parti_prompts

    items = parti_prompts(min(n, 1600))
    out = [{"id": f"{p['id']}", "prompt": p["prompt"]} for p in items]
    for i in range(len(out), n):  # past the set's size: the same prompts again, with their own ids
        out.append({"id": f"{out[i % len(items)]['id']}-{i}", "prompt": out[i % len(items)]["prompt"] + f" (take {i})"})
    return out


def environment(tmp: Path, db_url: str, fal_url: str, slots: int) -> dict[str, str]:
    config = tmp / "bench.toml"
    config.write_text(f"[providers.fal.limits]\nmax_concurrency = {slots}\n[providers.fal]\npoll_initial_s = 0.05\npoll_max_s = 0.2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update(DARKROOM_DATA_DIR=str(tmp / "data"), DARKROOM_DATABASE_URL=db_url, DARKROOM_CONFIG=str(config),
               FAL_KEY=KEY, FAL_BASE_URL=fal_url, PYTHONPATH=str(ROOT))
    return env


def queue(env: dict[str, str], items: list[dict[str, str]], iterations: int, tmp: Path) -> int:
    code = ("import json,sys\nfrom pathlib import Path\n"
            "from pipeline.config import Settings\nfrom pipeline.prompts.promptset import load_file\n"
            "from pipeline.runs.records import RunConfig, create_run, import_prompt_set\n"
            "from pipeline.store.db import open_database, session\n"
            "settings = Settings.from_env(); engine = open_database(settings)\n"
            "with session(engine) as s:\n"
            f"    run = create_run(s, settings, import_prompt_set(s, load_file(Path(sys.argv[1]))), RunConfig(providers=['fal'], iterations={iterations}))\n"
            "    s.commit(); print(run.id)\n")
    path = tmp / "set.json"
    path.write_text(json.dumps({"prompts": items}), encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"could not queue the run:\n{done.stderr[-2000:]}")
    return int(done.stdout)


def finished(db_url: str, run_id: int) -> tuple[str, int, int]:
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.connect() as c:
        status = c.execute(sa.text("SELECT status FROM run WHERE id = :r"), {"r": run_id}).scalar_one()
        done = c.execute(sa.text("SELECT count(*) FROM run_item WHERE run_id = :r AND status = 'completed'"), {"r": run_id}).scalar_one()
        images = c.execute(sa.text("SELECT count(*) FROM iteration WHERE status = 'ok'")).scalar_one()
    engine.dispose()
    return str(status), int(done), int(images)


def measure(args: argparse.Namespace, fal_url: str, n: int, *, kill: bool = False) -> dict[str, Any]:
    _get(f"{fal_url}/_reset")
    db = Database(f"{n}{'k' if kill else ''}")
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            env = environment(tmp, db.url, fal_url, args.slots)
            run_id = queue(env, prompts(args.prompts), args.iterations, tmp)
            before = db.stats()
            cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            per_worker = max(1, math.ceil(2 * args.slots / n))
            t0 = time.monotonic()
            procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "worker", "--id", f"bench-{i}", "--concurrency", str(per_worker),
                                       "--until-idle"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for i in range(n)]
            killed = False
            target = args.prompts * args.iterations
            while any(p.poll() is None for p in procs):
                if kill and not killed and finished(db.url, run_id)[2] >= target // 3:
                    os.kill(procs[0].pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.5)
            wall = time.monotonic() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            after = db.stats()
            status, done, images = finished(db.url, run_id)
    finally:
        db.drop()
    served = _get(f"{fal_url}/_summary")
    makespan = served["last"] - served["first"]
    ideal = max(sum(served["latencies"]) / args.slots, max(served["latencies"], default=0.0))
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    delta = {k: after[k] - before[k] for k in after}
    return {"workers": n, "status": status, "completed": done, "images": images, "submitted": served["submitted"],
            "rejected": served["rejected"], "peak": served["peak"], "wall_s": wall, "makespan_s": makespan,
            "throughput": images / makespan if makespan else 0.0, "utilisation": ideal / makespan if makespan else 0.0,
            "cpu_s_per_image": cpu / max(1, images), "cpu_share": cpu / wall / (os.cpu_count() or 1),
            "db_per_image": {k: v / max(1, images) for k, v in delta.items()}, "killed": killed}


def count_statements(args: argparse.Namespace, fal_url: str) -> dict[str, float]:
    """One in-process worker with a statement counter: exact SQL statements per image."""
    import asyncio

    from sqlalchemy import event

    _get(f"{fal_url}/_reset")
    db = Database("count")
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            env = environment(tmp, db.url, fal_url, args.slots)
            run_id = queue(env, prompts(args.count), args.iterations, tmp)
            os.environ.update({k: v for k, v in env.items() if k.startswith(("DARKROOM_", "FAL_"))})
            from pipeline import registry
            from pipeline.config import Settings
            from pipeline.runs.worker import Worker
            from pipeline.store.db import open_database

            settings = Settings.from_env()
            registry.ensure_loaded(settings.plugin_modules())
            engine = open_database(settings)
            kinds: dict[str, int] = {}

            def count(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
                word = statement.lstrip().split(None, 1)[0].upper()
                kinds[word] = kinds.get(word, 0) + 1

            event.listen(engine, "before_cursor_execute", count)
            asyncio.run(Worker(engine, settings, worker_id="bench-count", concurrency=2 * args.slots).serve(until_idle=True))
            engine.dispose()
            _, _, images = finished(db.url, run_id)
    finally:
        db.drop()
    return {k: v / max(1, images) for k, v in sorted(kinds.items())} | {"images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts to measure, comma-separated")
    parser.add_argument("--slots", type=int, default=64, help="the provider's capacity (and shared max_concurrency)")
    parser.add_argument("--median", type=float, default=1.0)
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--kill", type=int, default=4, help="repeat this worker count with one worker killed -9 (0: skip)")
    parser.add_argument("--count", type=int, default=50, help="prompts for the statement count (0: skip)")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(args.slots, args.median, args.sigma, child), daemon=True)
    server.start()
    fal_url = parent.recv()
    print(f"{args.prompts} prompts x {args.iterations} iterations; provider capacity {args.slots}, median {args.median:g} s, "
          f"sigma {args.sigma:g}; {os.cpu_count()} CPU(s); PostgreSQL at {make_url(SERVER).render_as_string(hide_password=True)}")
    try:
        if args.count:
            print("SQL statements per image (one in-process worker, counted on its engine):", json.dumps(count_statements(args, fal_url)))
        for n in [int(x) for x in args.workers.split(",") if x.strip()]:
            r = measure(args, fal_url, n)
            print(f"workers {n}: {r['images']} images, {r['completed']}/{args.prompts} prompts, status {r['status']}; "
                  f"{r['throughput']:.1f} images/s, utilisation {r['utilisation']:.2f}, peak in flight {r['peak']}/{args.slots}, "
                  f"429s {r['rejected']}; wall {r['wall_s']:.0f} s; workers' CPU {r['cpu_s_per_image'] * 1000:.0f} ms/image = {r['cpu_share']:.0%} of the cores; "
                  f"DB per image: {json.dumps({k: round(v, 1) for k, v in r['db_per_image'].items()})}")
        if args.kill:
            r = measure(args, fal_url, args.kill, kill=True)
            stored = r["images"]
            print(f"kill -9 of 1 of {args.kill} workers at 1/3: status {r['status']}, {r['completed']}/{args.prompts} prompts completed, "
                  f"{stored} images stored, {r['submitted']} submissions to the provider "
                  f"({r['submitted'] - stored} paid and lost: in flight in the killed worker, never a finished step)")
    finally:
        parent.send("stop")
        server.join(5)


if __name__ == "__main__":
    main()
