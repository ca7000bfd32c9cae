"""Benchmark: splitting 1,000 2×2 grids (issue 13: ≤ 20 ms per 1024² grid on one core).

    python bench/grids.py [--grids 1000] [--distinct 40]

Makes ``--distinct`` different grids with Pillow (tests/grid_samples.py: white, black and grey
gutters, even and uneven, with and without borders, JPEG quality 60; 1024×1024 and 1536×1024),
then splits ``--grids`` of them, cycling, and prints per grid, median and 95th percentile:

- find: locating the cells in a decoded image (pipeline.grids.find_cells), the analysis itself
- decode+find: from the JPEG bytes
- split: split_image, bytes in → four encoded cells out (decode, find, crop, JPEG-encode 4 cells)

Each figure is this thread's CPU time (time.thread_time: what one core spends, unaffected by
other processes sharing the machine); the wall times follow, and the peak resident memory. It also reports how many cells came out within 2 px of the truth.
"""

from __future__ import annotations

import argparse
import io
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from pipeline.grids import find_cells, split_image  # noqa: E402
from tests.grid_samples import Layout, make_grid  # noqa: E402

BLACK, GREY = (0, 0, 0), (128, 128, 128)
LAYOUTS = [
    Layout(), Layout(colour=BLACK), Layout(vertical_gutter=8, horizontal_gutter=30, border=(10, 40, 24, 6)),
    Layout(colour=BLACK, border=(20, 20, 20, 20)), Layout(colour=GREY, vertical_gutter=14, horizontal_gutter=22),
    Layout(width=1536, height=1024), Layout(width=1536, height=1024, vertical_gutter=24, horizontal_gutter=12, colour=BLACK),
    Layout(width=1536, height=1024, border=(30, 30, 30, 30), split_x=0.45, split_y=0.55),
]


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    return f"median {statistics.median(ordered) * 1000:6.1f} ms  p95 {ordered[int(len(ordered) * 0.95) - 1] * 1000:6.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=40)
    args = parser.parse_args()
    samples = [make_grid(LAYOUTS[k % len(LAYOUTS)], seed=k // len(LAYOUTS)) for k in range(args.distinct)]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    timings: dict[str, list[float]] = {"find": [], "decode+find": [], "split": []}
    walls: dict[str, list[float]] = {"find": [], "decode+find": [], "split": []}
    square: list[float] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    within = cells = refused = 0
    for n in range(args.grids):
        data, truth = samples[n % len(samples)]
        image = Image.open(io.BytesIO(data)).convert("RGB")
        t0, w0 = time.thread_time(), time.perf_counter()
        find_cells(image)
        t1, w1 = time.thread_time(), time.perf_counter()
        find_cells(Image.open(io.BytesIO(data)))
        t2, w2 = time.thread_time(), time.perf_counter()
        result = split_image(data)
        t3, w3 = time.thread_time(), time.perf_counter()
        for name, cpu_s, wall_s in (("find", t1 - t0, w1 - w0), ("decode+find", t2 - t1, w2 - w1), ("split", t3 - t2, w3 - w2)):
            timings[name].append(cpu_s)
            walls[name].append(wall_s)
        if image.size == (1024, 1024):
            square.append(t2 - t1)
        if not result.split.is_grid:
            refused += 1
            continue
        for box, true_box in zip(result.split.cells, truth, strict=True):
            cells += 1
            within += max(abs(a - b) for a, b in zip(box, true_box, strict=True)) <= 2
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"{args.grids} grids ({args.distinct} distinct, 1024x1024 and 1536x1024, JPEG q60)")
    for name, values in timings.items():
        print(f"  {name:12s} CPU {_ms(values)}   (wall {_ms(walls[name])})")
    print(f"  decode+find, 1024x1024 only: CPU {_ms(square)}")
    print(f"  total wall {wall:.1f} s, CPU {cpu:.1f} s (CPU/wall {cpu / wall:.2f}: below 1 means the machine was shared)")
    print(f"  peak RSS {peak / 1024:.0f} MB (before the loop {rss_before / 1024:.0f} MB)")
    print(f"  accuracy: {within}/{cells} cells within 2 px of the truth; {refused} grids refused as non-grids")


if __name__ == "__main__":
    main()
