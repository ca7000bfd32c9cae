"""Benchmark: how much of a provider's capacity the pipeline uses, on every kind of service (issue 17).

    python bench/throughput.py            # every combination below (hours: 3 s x 1,000 x 2 alone is ~15 min a row)
    python bench/throughput.py --quick    # a short subset: each service model at 0.3 s and 1 s, 100 x 2, plus C = 32
    python bench/throughput.py --models b,c --medians 1 --prompts 200 --high-c ""   # any slice
    python bench/throughput.py --jobs 4 --large-only-at 1 --baseline-max 0           # the closing table (~25 min)

Service models (tests/emulators/capacity.py, a loopback emulator in its own process; C slots; each
generation a log-normal time, shape ``--sigma``, drawn from its prompt text so both contenders get
the same latencies for the same work):

    a  fal queue API with its status stream; 429 beyond C
    b  fal queue API, polled (no stream); beyond C requests wait in the server's queue (IN_QUEUE, queue_position)
    c  fal queue API, polled (no stream); 429 beyond C
    d  synchronous: one HTTP request per image (the worker provider's format); 429 beyond C

Each row takes N prompts x 2 iterations (offline judge and refiner) through the real pipeline:
``RunExecutor`` with the provider's defaults from pipeline/defaults.toml (its polling, retry policy,
breaker, rate limiter with ``max_concurrency`` = C) and 2C prompt workers. The baseline (rows with
at most ``--baseline-max`` prompts) is the original design: prompts in fixed batches of 3 with
``asyncio.gather``, the same provider, judge and refiner objects.

Utilisation = ideal makespan / actual makespan, the ideal being the least time C slots need for
the latencies the emulator served: max(sum of latencies / C, longest latency). Polls per image,
429s, TCP connections accepted and requests per connection are the emulator's own counts. The
load average (1 min) at the end of each row is printed with it: the machine is shared.

Also per row: the run's tail (from the last moment all C slots were busy to the last job's end,
against the least time C slots need for the work left at that moment: max(work / C, longest
piece)); start s (the run's start to its first submission: jobs, decompositions and rows, which
the ideal leaves out); notice ms (polled models: a job's end to its result being fetched); CPU
ms/img (the pipeline process's CPU, all threads, per image: the figure to compare on a loaded
machine, and what says where the CPU becomes the limit: C / mean latency x CPU per image against
the one core a GIL-bound process gets).

``--jobs N`` runs the C = ``--slots`` rows of median >= ``--parallel-min`` (they mostly wait on
the service) N at a time, each in its own processes; the others (0.3 s, C = 32/64: CPU-bound) then
run alone. N processes add their load to each other's rows: the load column shows it.
Targets (issue 17): >= 0.90 at C = 8 for every model, latency and size; >= 0.85 at C = 32 and 64.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators.capacity import KEY, CapacityService  # noqa: E402

MODELS = {"a": "stream", "b": "queue", "c": "poll429", "d": "sync"}
PROVIDER = {"a": "fal", "b": "fal", "c": "fal", "d": "worker"}


@dataclass
class Row:
    model: str
    median: float
    prompts: int
    slots: int
    generations: int = 0
    rejected: int = 0
    polls_per_image: float = 0.0
    connections: int = 0
    requests_per_connection: float = 0.0
    ideal_s: float = 0.0
    actual_s: float = 0.0
    completed: str = ""
    baseline: float | None = None
    load: float = 0.0
    cpu_ms_per_image: float = 0.0  # the pipeline process's CPU (all its threads) per image generated
    tail_ideal_s: float = 0.0  # the run's tail (tests/emulators/capacity.py ``tail``): the least time the work left needed
    tail_actual_s: float = 0.0  # and what it took, from the last moment every slot was busy to the end
    notice_ms: float = 0.0  # polled models: mean time from a job's end to its result being fetched
    start_s: float = 0.0  # from the run's start to its first submission (jobs, decompositions, rows: not in the ideal)

    @property
    def utilisation(self) -> float:
        return self.ideal_s / self.actual_s if self.actual_s else 0.0


def _serve(model: str, slots: int, median: float, sigma: float, conn: Any) -> None:
    emulator = CapacityService(model, slots, median, sigma).start()
    conn.send(emulator.url)
    conn.recv()  # until told to stop


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url) as r:
        return dict(json.loads(r.read()))


def ideal_makespan(latencies: list[float], slots: int) -> float:
    return max(sum(latencies) / slots, max(latencies)) if latencies else 0.0


def prompts(n: int) -> list[dict[str, Any]]:
    """``n`` PartiPrompts prompts (bench/data/PartiPrompts.tsv, shipped in the repository), text only."""
    sys.path.insert(0, str(ROOT / "bench"))
    from parti import parti_prompts

    return [{"id": p["id"], "prompt": p["prompt"]} for p in parti_prompts(n)]


def configure(tmp: Path, letter: str, url: str, slots: int) -> Any:
    """Settings for one row: the service's defaults, its concurrency = C, pointed at the emulator."""
    config = tmp / "bench.toml"
    config.write_text(f"""
[providers.fal]
status_stream = {"true" if letter == "a" else "false"}
[providers.fal.limits]
max_concurrency = {slots}
[providers.worker.limits]
max_concurrency = {slots}
""")
    os.environ.update({"DARKROOM_DATA_DIR": str(tmp / "data"), "DARKROOM_CONFIG": str(config), "FAL_KEY": KEY, "FAL_BASE_URL": url,
                       "WORKER_URL": f"{url}/generate"})
    os.environ.pop("DARKROOM_DATABASE_URL", None)
    os.environ.pop("WORKER_TOKEN", None)
    from pipeline.config import Settings

    return Settings.from_env()


async def baseline(settings: Any, provider_name: str, items: list[dict[str, Any]], iterations: int) -> float:
    """The original batch processor: 3 prompts at a time, each taken through all its iterations."""
    from pipeline import registry
    from pipeline.components import EvaluationRequest, GenerationRequest, RefinementRequest
    from pipeline.images import inspect_image

    provider = registry.providers.create(provider_name, settings)
    judge = registry.judges.create("offline", settings)
    refiner = registry.refiners.create("offline", settings)

    async def one(item: dict[str, Any]) -> None:
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


def pipeline_run(settings: Any, provider_name: str, items: list[dict[str, Any]], iterations: int, workers: int,
                 tmp: Path, profile: Path | None = None) -> tuple[float, str]:
    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig, create_run, import_prompt_set
    from pipeline.runs.runner import RunExecutor
    from pipeline.store.db import open_database, session

    path = tmp / "set.json"
    path.write_text(json.dumps({"prompts": items}), encoding="utf-8")
    engine = open_database(settings)
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, load_file(path)),
                         RunConfig(providers=[provider_name], iterations=iterations, concurrency=workers), claim=True)
        s.commit()
        run_id = run.id
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0, cpu0 = time.perf_counter(), time.process_time()
    STARTED[0] = time.monotonic()  # the emulator's clock too (CLOCK_MONOTONIC is one per machine)
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    elapsed = time.perf_counter() - t0
    CPU_USED[0] = time.process_time() - cpu0
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(str(profile))
    engine.dispose()
    return elapsed, f"{outcome.completed}/{outcome.total}"


def workers_run(settings: Any, provider_name: str, items: list[dict[str, Any]], iterations: int, workers: int,
                tmp: Path, processes: int) -> tuple[float, str]:
    """The same run executed by ``processes`` ``python -m pipeline worker`` processes on the same SQLite
    database (started first and idle, as deployed workers are), ``workers`` prompts at once in all."""
    import signal
    import subprocess

    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig, create_run, get_run, import_prompt_set
    from pipeline.store.db import open_database, session

    path = tmp / "set.json"
    path.write_text(json.dumps({"prompts": items}), encoding="utf-8")
    engine = open_database(settings)
    config = tmp / "bench.toml"
    config.write_text(config.read_text() + "\n[workers]\npoll_s = 0.05\n")
    procs = [subprocess.Popen([sys.executable, "-m", "pipeline", "worker", "--id", f"bench-{i}", "--concurrency",
                               str(max(1, workers // processes))], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(processes)]
    time.sleep(4.0)  # their start-up (imports, migrations) is not the run's
    cpu0 = sum(_cpu_seconds(p.pid) for p in procs)
    t0 = time.perf_counter()
    STARTED[0] = time.monotonic()
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, load_file(path)), RunConfig(providers=[provider_name], iterations=iterations,
                                                                                     concurrency=workers))
        s.commit()
        run_id = run.id or 0
    while True:
        time.sleep(0.05)
        with session(engine) as s:
            run = get_run(s, run_id)
            if run.status not in ("queued", "running"):
                break
    elapsed = time.perf_counter() - t0
    CPU_USED[0] = sum(_cpu_seconds(p.pid) for p in procs) - cpu0
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=60)
    engine.dispose()
    return elapsed, f"{run.completed}/{run.total}"


def _cpu_seconds(pid: int) -> float:
    """A process's user + system CPU so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU_USED = [0.0]  # the last pipeline run's process CPU seconds
STARTED = [0.0]  # and its start, time.monotonic()


def run_row(row: Row, iterations: int, sigma: float, with_baseline: bool, profile_dir: Path | None, processes: int = 0) -> Row:
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve, args=(MODELS[row.model], row.slots, row.median, sigma, child), daemon=True)
    server.start()
    url = parent.recv()
    try:
        tmp = Path(tempfile.mkdtemp(prefix="darkroom-throughput-", dir=os.environ.get("BENCH_TMP")))
        settings = configure(tmp, row.model, url, row.slots)
        items = prompts(row.prompts)
        profile = profile_dir / f"{row.model}-{row.median:g}s-{row.prompts}-C{row.slots}.prof" if profile_dir else None
        if processes:
            row.actual_s, row.completed = workers_run(settings, PROVIDER[row.model], items, iterations, 2 * row.slots, tmp, processes)
        else:
            row.actual_s, row.completed = pipeline_run(settings, PROVIDER[row.model], items, iterations, 2 * row.slots, tmp, profile)
        served = _get(f"{url}/_served")
        if os.environ.get("BENCH_SPANS"):  # every job's times, for a timeline (a JSON list; see /_spans)
            Path(os.environ["BENCH_SPANS"]).write_text(json.dumps({"started": STARTED[0], "spans": json.loads(urllib.request.urlopen(f"{url}/_spans").read())}))
        row.generations, row.rejected = served["generations"], served["rejected"]
        row.ideal_s = ideal_makespan(served["latencies"], row.slots)
        row.polls_per_image = served["polls"] / max(1, served["generations"])
        row.connections = served["connections"]
        row.requests_per_connection = served["requests"] / max(1, served["connections"])
        row.cpu_ms_per_image = CPU_USED[0] * 1000 / max(1, served["generations"])
        row.tail_ideal_s, row.tail_actual_s = served["tail"]["ideal"], served["tail"]["actual"]
        row.start_s = served["first_submitted"] - STARTED[0]
        row.notice_ms = served["notice_lag"] * 1000
        row.load = os.getloadavg()[0]
        if with_baseline:
            urllib.request.urlopen(f"{url}/_reset").read()
            elapsed = asyncio.run(baseline(settings, PROVIDER[row.model], items, iterations))
            base = _get(f"{url}/_served")
            row.baseline = ideal_makespan(base["latencies"], row.slots) / elapsed
    finally:
        parent.send("stop")
        server.join(timeout=5)
    return row


HEADER = (f"{'model':5} {'median':>6} {'prompts':>9} {'C':>3} {'done':>9} {'gens':>5} {'429s':>5} {'polls/img':>9} {'conns':>5} "
          f"{'req/conn':>8} {'ideal s':>8} {'actual s':>8} {'util':>6} {'tail ideal/actual s':>19} {'start s':>7} {'notice ms':>9} {'CPU ms/img':>10} {'baseline':>8} "
          f"{'load':>5}")


def line(r: Row, iterations: int) -> str:
    base = f"{r.baseline:8.3f}" if r.baseline is not None else f"{'-':>8}"
    return (f"{r.model:5} {r.median:5g}s {f'{r.prompts}x{iterations}':>9} {r.slots:3d} {r.completed:>9} {r.generations:5d} {r.rejected:5d} "
            f"{r.polls_per_image:9.2f} {r.connections:5d} {r.requests_per_connection:8.1f} {r.ideal_s:8.1f} {r.actual_s:8.1f} "
            f"{r.utilisation:6.3f} {f'{r.tail_ideal_s:.1f} / {r.tail_actual_s:.1f}':>19} {r.start_s:7.2f} {r.notice_ms:9.0f} {r.cpu_ms_per_image:10.1f} {base} {r.load:5.2f}")


def _row_job(job: tuple[Row, int, float, bool, Path | None, int]) -> Row:
    """One row, in this process (or a pool's)."""
    import logging

    from pipeline import load_run_modules, registry

    logging.getLogger("pipeline").setLevel(logging.ERROR)  # the 429s are counted, not printed one by one
    registry.ensure_loaded()
    load_run_modules()  # as the dashboard and a worker do before their first run: a row's start is the run's, not imports
    return run_row(*job)


def plan(args: argparse.Namespace) -> list[Row]:
    models = [m for m in args.models.split(",") if m]
    counts = [int(n) for n in args.prompts.split(",") if n]
    large_at = {float(m) for m in args.large_only_at.split(",") if m}
    rows = [Row(m, float(median), n, args.slots) for m in models for median in args.medians.split(",") if median
            for n in counts if not large_at or n == min(counts) or float(median) in large_at]
    for c in (int(c) for c in args.high_c.split(",") if c):
        rows += [Row(m, args.high_c_median, args.high_c_prompts, c) for m in models]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short subset (about 10 minutes): 0.3 s and 1 s, 100 x 2, C = 8 and 32")
    parser.add_argument("--models", default="a,b,c,d", help="service models, comma-separated (a b c d, see above)")
    parser.add_argument("--medians", default="0.3,1,3", help="median latencies, seconds, comma-separated")
    parser.add_argument("--prompts", default="200,1000", help="prompt counts, comma-separated")
    parser.add_argument("--large-only-at", default="", help="medians at which the prompt counts above the smallest run "
                        "(e.g. \"1\": 1,000 x 2 only at 1 s); default every median")
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="C for the main grid")
    parser.add_argument("--sigma", type=float, default=0.5, help="log-normal shape")
    parser.add_argument("--high-c", default="32,64", help="the larger Cs, comma-separated (\"\" for none)")
    parser.add_argument("--high-c-median", type=float, default=1.0)
    parser.add_argument("--high-c-prompts", type=int, default=1000)
    parser.add_argument("--baseline-max", type=int, default=200, help="run the batches-of-3 baseline on C = 8 rows with at most this "
                        "many prompts (0: never)")
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once, each in its own processes (C = 8 rows mostly "
                        "wait on the service; the load this adds is in each row's load column); see --parallel-min")
    parser.add_argument("--parallel-min", type=float, default=1.0, help="with --jobs, only C = --slots rows of at least this median "
                        "run side by side")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each pipeline run into this folder")
    parser.add_argument("--processes", type=int, default=0, help="execute each run with this many `python -m pipeline worker` "
                        "processes on the row's SQLite database instead of in this process (0)")
    args = parser.parse_args()
    if args.quick:
        args.medians, args.prompts, args.high_c, args.high_c_prompts, args.baseline_max = "0.3,1", "100", "32", 400, 100

    rows = plan(args)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    print(f"{len(rows)} rows; iterations {args.iterations}; latency log-normal, sigma {args.sigma:g}; {os.cpu_count()} CPU(s)", flush=True)
    print(HEADER, flush=True)
    done = []
    jobs = [(row, args.iterations, args.sigma, row.slots == args.slots and row.prompts <= args.baseline_max, args.profile, args.processes)
            for row in rows]
    # Rows that mostly wait on the service (C = --slots, median >= --parallel-min) may run side by side; the
    # others need the CPU (0.3 s medians, C = 32/64) and run alone, after them.
    together = [j for j in jobs if args.jobs > 1 and j[0].slots == args.slots and j[0].median >= args.parallel_min]
    if together:  # in parallel processes (a fresh one per row: the pipeline's settings live in its environment)
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"), max_tasks_per_child=1) as pool:
            for future in as_completed([pool.submit(_row_job, job) for job in together]):
                done.append(future.result())
                print(line(done[-1], args.iterations), flush=True)
    for job in jobs:
        if not any(job is j for j in together):
            done.append(_row_job(job))
            print(line(done[-1], args.iterations), flush=True)
    if together:
        order = {(r.model, r.median, r.prompts, r.slots): i for i, r in enumerate(rows)}
        done.sort(key=lambda r: order[(r.model, r.median, r.prompts, r.slots)])
    print("\nall rows:")
    print(HEADER)
    for row in done:
        print(line(row, args.iterations))
    grid = [r for r in done if r.slots == args.slots]
    high = [r for r in done if r.slots != args.slots]
    if grid:
        target = 0.90 if args.slots <= 8 else 0.85
        print(f"C = {args.slots}: lowest utilisation {min(r.utilisation for r in grid):.3f} (target >= {target:.2f})")
    if high:
        print(f"C = {args.high_c}: lowest utilisation {min(r.utilisation for r in high):.3f} (target >= 0.85)")


if __name__ == "__main__":
    main()
