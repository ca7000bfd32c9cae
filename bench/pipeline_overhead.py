"""Benchmark: the pipeline's own cost per image, and 200 prompts x 2 iterations end to end.

    python bench/pipeline_overhead.py [--prompts 200] [--overhead-prompts 200]

Prints three figures, measured on PartiPrompts prompts in a temporary data folder:

1. renderer: the offline provider's time per 1024x1024 image (median and p95, one core)
2. overhead: time per image of everything but the renderer (DB writes, image file with
   fsync, thumbnail, judge, refinement, sidecars, call log), using a provider that replays
   pre-rendered 1024x1024 images (a different one each call, so nothing is cached), with
   1 worker and with 3; as wall time and as CPU time of all threads
3. end to end: wall time of N prompts x 2 iterations on the offline stack, default settings

Targets (issue 2): overhead <= 15 ms per image; 200 x 2 in under 30 s on 2 cores.
Set BENCH_TMP=/dev/shm to put the data folder in memory and see what the disk adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import registry  # noqa: E402
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.prompts.promptset import load_file  # noqa: E402
from pipeline.runs.records import RunConfig, create_run, import_prompt_set  # noqa: E402
from pipeline.runs.runner import RunExecutor  # noqa: E402
from pipeline.services.offline.render import render  # noqa: E402
from pipeline.store.db import open_database, session  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from parti import parti_prompts  # noqa: E402  (bench/data/PartiPrompts.tsv, shipped in the repository)


class ReplayProvider(ImageProvider):
    """Returns pre-rendered images instantly, so only the pipeline's own work is timed.

    Every request gets an image no earlier request got, so no thumbnail or decode is cached.
    """

    name = "replay"
    label = "benchmark replay"
    images: list[bytes] = []
    served = 0

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        cls = type(self)
        data = cls.images[cls.served % len(cls.images)]
        cls.served += 1
        return GeneratedImage(data=data, mime_type="image/jpeg", model="replay", cost_usd=0.0)


def run_once(prompts: list[dict], provider: str, concurrency: int, iterations: int = 2) -> tuple[float, float, int]:
    """Run the prompts in a fresh data folder; return (wall seconds, CPU seconds of all threads, images)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["DARKROOM_DATA_DIR"] = tmp
        settings = Settings.from_env()
        engine = open_database(settings)
        set_path = Path(tmp) / "set.json"
        set_path.write_text(json.dumps({"prompts": prompts}))
        with session(engine) as s:
            run = create_run(s, settings, import_prompt_set(s, load_file(set_path)),
                             RunConfig(providers=[provider], iterations=iterations, concurrency=concurrency))
            s.commit()
            run_id = run.id
        t0, cpu0 = time.perf_counter(), time.process_time()
        outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        assert outcome.completed == len(prompts), outcome
        with engine.connect() as conn:
            images = conn.exec_driver_sql("SELECT COUNT(*) FROM iteration WHERE status = 'ok'").scalar()
        engine.dispose()
        return wall, cpu, int(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--overhead-prompts", type=int, default=200)
    args = parser.parse_args()
    registry.ensure_loaded()
    registry.providers.register(ReplayProvider)
    prompts = parti_prompts(max(args.prompts, args.overhead_prompts))
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    # 1. Renderer alone.
    times = []
    for p in prompts[:60]:
        t0 = time.perf_counter()
        render(p["prompt"], seed=7, width=1024, height=1024)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(f"renderer, 1024x1024 JPEG, one core: median {statistics.median(times):.1f} ms, "
          f"p95 {times[math.ceil(0.95 * len(times)) - 1]:.1f} ms, max {times[-1]:.1f} ms (target <= 50 ms)")

    # 2. Pipeline overhead with the renderer excluded.
    needed = 2 * args.overhead_prompts
    overhead_set = (prompts * (needed // len(prompts) + 1))[:needed]
    ReplayProvider.images = [render(p["prompt"], seed=i, width=1024, height=1024) for i, p in enumerate(overhead_set)]
    for workers in (1, 3):
        ReplayProvider.served = 0
        wall, cpu, images = run_once(prompts[: args.overhead_prompts], "replay", workers)
        print(f"overhead, renderer excluded, {workers} worker(s): {wall * 1000 / images:.1f} ms wall per image, "
              f"{cpu * 1000 / images:.1f} ms CPU per image ({images} images in {wall:.2f} s; target <= 15 ms)")

    # 3. End to end on the offline stack.
    wall, _, images = run_once(prompts[: args.prompts], "offline", 3)
    print(f"end to end, offline stack, {args.prompts} prompts x 2 iterations, 3 workers: {wall:.1f} s "
          f"({images} images, {wall * 1000 / images:.1f} ms per image; target < 30 s)")


if __name__ == "__main__":
    main()
