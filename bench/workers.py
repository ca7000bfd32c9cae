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
- CPU seconds per image: of each worker process (from wait4, so a loaded machine does not
  inflate it), of the PostgreSQL backends serving them (from /proc) and of the emulator; the
  throughput 2 cores would allow for Darkroom alone (workers + database) is 2 / that;
- the database per image: transactions, rows written and read, bytes the database grew;
- the load average before and after (the machine may be shared).

``--kill N`` runs the N-worker case again and kill -9s one worker a third of the way in: every
prompt must complete; the stored request ids must be unique and among the emulator's
submissions, and the successful provider calls must equal their distinct steps (no finished step
paid twice); submissions beyond the stored images are the killed worker's calls in flight.
``--count P`` runs P prompts through one in-process worker with a statement counter on its engine:
the exact SQL statements per image. One table is printed at the end.

Past this machine, on paper: see the README (Benchmarks, ``bench/workers.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
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


def paid_steps(db_url: str) -> dict[str, Any]:
    """What the database says was paid for: the request ids of the stored images, and the successful
    provider calls per step (a step paid twice would show two calls with one step key)."""
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    with engine.connect() as c:
        stored = [str(r) for r in c.execute(sa.text("SELECT request_id FROM iteration WHERE status = 'ok'")).scalars()]
        calls = c.execute(sa.text("SELECT count(*), count(DISTINCT step_key) FROM provider_call "
                                  "WHERE provider = 'fal' AND outcome = 'ok'")).one()
    engine.dispose()
    return {"stored": stored, "ok_calls": int(calls[0]), "ok_steps": int(calls[1])}


def _ticks(pid: int) -> float:
    """A live process's CPU seconds (user + system) from /proc; 0 when it is gone or unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def backend_pids(admin: sa.Engine, name: str) -> list[int]:
    with admin.connect() as c:
        return [int(p) for p in c.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :n"), {"n": name}).scalars()]


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def measure(args: argparse.Namespace, fal_url: str, emulator_pid: int, n: int, *, kill: bool = False) -> dict[str, Any]:
    _get(f"{fal_url}/_reset")
    db = Database(f"{n}{'k' if kill else ''}")
    load_before = load()
    backends: dict[int, float] = {}  # the PostgreSQL backends serving the workers -> their CPU seconds, last seen
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            env = environment(tmp, db.url, fal_url, args.slots)
            run_id = queue(env, prompts(args.prompts), args.iterations, tmp)
            before = db.stats()
            emulator0 = _ticks(emulator_pid)
            per_worker = max(1, math.ceil(2 * args.slots / n))
            t0 = time.monotonic()
            procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "worker", "--id", f"bench-{i}", "--concurrency", str(per_worker),
                                       "--until-idle"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for i in range(n)]
            killed = False
            target = args.prompts * args.iterations
            alive = {p.pid: p for p in procs}
            per_process: list[float] = []  # each worker's CPU seconds (user + system), from wait4
            while alive:
                for pid, proc in list(alive.items()):
                    got, status_code, usage = os.wait4(pid, os.WNOHANG)
                    if got == pid:
                        proc.returncode = status_code
                        per_process.append(usage.ru_utime + usage.ru_stime)
                        del alive[pid]
                for pid in backend_pids(db.admin, db.name):
                    backends[pid] = max(backends.get(pid, 0.0), _ticks(pid))
                if kill and not killed and finished(db.url, run_id)[2] >= target // 3:
                    os.kill(procs[0].pid, signal.SIGKILL)
                    killed = True
                time.sleep(0.5)
            wall = time.monotonic() - t0
            emulator_cpu = _ticks(emulator_pid) - emulator0
            after = db.stats()
            status, done, images = finished(db.url, run_id)
            paid = paid_steps(db.url)
    finally:
        db.drop()
    load_after = load()
    served = _get(f"{fal_url}/_summary")
    makespan = served["last"] - served["first"]
    ideal = max(sum(served["latencies"]) / args.slots, max(served["latencies"], default=0.0))
    cpu = sum(per_process)
    pg_cpu = sum(backends.values())
    delta = {k: after[k] - before[k] for k in after}
    per = max(1, images)
    submitted = set(served["request_ids"])
    return {"workers": n, "status": status, "completed": done, "images": images, "submitted": served["submitted"],
            "rejected": served["rejected"], "peak": served["peak"], "wall_s": wall, "makespan_s": makespan,
            "throughput": images / makespan if makespan else 0.0, "utilisation": ideal / makespan if makespan else 0.0,
            "mean_latency_s": sum(served["latencies"]) / max(1, len(served["latencies"])),
            "cpu_s_per_image": cpu / per, "cpu_per_process_s": sorted(per_process),
            "pg_cpu_s_per_image": pg_cpu / per, "emulator_cpu_s_per_image": emulator_cpu / per,
            "cpu_share": (cpu + pg_cpu + emulator_cpu) / wall / (os.cpu_count() or 1),
            "db_per_image": {k: v / per for k, v in delta.items()}, "killed": killed,
            "load": f"{load_before} -> {load_after}",
            "stored_unique": len(set(paid["stored"])) == len(paid["stored"]), "stored_submitted": set(paid["stored"]) <= submitted,
            "ok_calls": paid["ok_calls"], "ok_steps": paid["ok_steps"]}


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
    header = ("| workers | images | prompts done | images/s | provider utilisation | peak in flight | 429s | wall s "
              "| workers' CPU ms/image (sum) | CPU s per worker process | PostgreSQL CPU ms/image | emulator CPU ms/image "
              "| all CPU / 2 cores | cores-bound images/s | DB per image: xact / ins / upd / read / bytes | load 1/5/15 before -> after |")
    rows: list[str] = []
    try:
        if args.count:
            print("SQL statements per image (one in-process worker, counted on its engine):", json.dumps(count_statements(args, fal_url)), flush=True)
        cases = [(int(x), False) for x in args.workers.split(",") if x.strip()] + ([(args.kill, True)] if args.kill else [])
        for n, kill in cases:
            r = measure(args, fal_url, server.pid or 0, n, kill=kill)
            darkroom_cpu = r["cpu_s_per_image"] + r["pg_cpu_s_per_image"]  # what one image costs the cores, the provider's emulator excluded
            cores_bound = (os.cpu_count() or 1) / darkroom_cpu if darkroom_cpu else 0.0
            db = r["db_per_image"]
            rows.append(
                f"| {n}{' (kill -9 of one)' if kill else ''} | {r['images']} | {r['completed']}/{args.prompts} | {r['throughput']:.1f} "
                f"| {r['utilisation']:.2f} | {r['peak']}/{args.slots} | {r['rejected']} | {r['wall_s']:.0f} "
                f"| {r['cpu_s_per_image'] * 1000:.0f} | {', '.join(f'{c:.0f}' for c in r['cpu_per_process_s'])} "
                f"| {r['pg_cpu_s_per_image'] * 1000:.0f} | {r['emulator_cpu_s_per_image'] * 1000:.0f} | {r['cpu_share']:.0%} "
                f"| {cores_bound:.0f} | {db['transactions']:.1f} / {db['inserted']:.1f} / {db['updated']:.1f} / {db['read']:.0f} / "
                f"{db['bytes'] / 1024:.1f} KB | {r['load']} |")
            print(rows[-1], flush=True)
            if kill:
                stored = r["images"]
                print(f"kill -9 of 1 of {n} workers at 1/3: status {r['status']}, {r['completed']}/{args.prompts} prompts completed, "
                      f"{stored} images stored, {r['submitted']} submissions to the provider ({r['submitted'] - stored} paid and lost: "
                      f"in flight in the killed worker, never recorded); stored request ids unique: {r['stored_unique']}, "
                      f"all among the submissions: {r['stored_submitted']}; successful provider calls {r['ok_calls']} "
                      f"for {r['ok_steps']} distinct steps (equal: no finished step paid twice)", flush=True)
        mean = r["mean_latency_s"] if cases else 0.0
        print(f"\nprovider bound: {args.slots} slots / {mean:.2f} s mean latency = {args.slots / mean if mean else 0:.0f} images/s")
        print(header)
        print("|" + "---|" * header.count(" | ") + "---|")
        print("\n".join(rows))
    finally:
        parent.send("stop")
        server.join(5)


if __name__ == "__main__":
    main()
