"""Benchmark: splitting 1,000 2×2 grids (issue 13: ≤ 20 ms per 1024² grid on one core).

    python bench/grids.py [--grids 1000] [--distinct 48]

Makes ``--distinct`` different grids with Pillow (tests/grid_samples.py LAYOUTS: white, black and
grey gutters, even and uneven, with and without borders, pictures whose edges come close to the
gutter's colour; JPEG quality 60; 1024×1024 and 1536×1024), splits ``--grids`` of them, cycling,
and the non-grids of tests/grid_samples.non_grids() once. It prints:

- accuracy: cells within 2 px of the truth / cells, and non-grids cut / non-grids;
- per grid, median and 95th percentile, for each stage of pipeline.grids.split_image:
  decode (JPEG bytes → RGB image), detect (find_cells), crop (the four cells), and encode (the four
  cells to JPEG at quality 95, as the pipeline stores them). The figure held to the target is
  decode + detect + crop of a 1024² grid; encode is reported beside it;
- each as CPU time of this process (time.process_time: what one core spends, hardly touched by
  other processes sharing the machine) and as wall time;
- memory: peak RSS growth over the loop, and tracemalloc's peak (numpy and Python allocations;
  Pillow's own buffers are not traced) over one split;
- the machine's load (uptime) before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.grids import crop, decode, encode, find_cells, split_image  # noqa: E402
from tests.grid_samples import LAYOUTS, make_grid, non_grids  # noqa: E402

STAGES = ("decode", "detect", "crop", "encode")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"{statistics.median(ordered) * 1000:6.2f} / {p95 * 1000:6.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--grids", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=48)
    args = parser.parse_args()
    names = sorted(LAYOUTS)
    samples = [make_grid(LAYOUTS[names[k % len(names)]], seed=k // len(names)) for k in range(args.distinct)]
    others = non_grids()
    print(f"load before: {_uptime()}")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu: dict[str, dict[str, list[float]]] = {}  # size → stage → seconds
    wall: dict[str, dict[str, list[float]]] = {}
    within = cells = refused = 0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for n in range(args.grids):
        data, truth = samples[n % len(samples)]
        c0, w0 = time.process_time(), time.perf_counter()
        decoded = decode(data)
        c1, w1 = time.process_time(), time.perf_counter()
        assert not isinstance(decoded, str), decoded
        image, fmt = decoded
        split = find_cells(image)
        c2, w2 = time.process_time(), time.perf_counter()
        pieces = crop(image, split)
        c3, w3 = time.process_time(), time.perf_counter()
        encode(pieces, fmt)
        c4, w4 = time.process_time(), time.perf_counter()
        size = f"{image.width}x{image.height}"
        for name, c, w in zip(STAGES, (c1 - c0, c2 - c1, c3 - c2, c4 - c3), (w1 - w0, w2 - w1, w3 - w2, w4 - w3), strict=True):
            cpu.setdefault(size, {}).setdefault(name, []).append(c)
            wall.setdefault(size, {}).setdefault(name, []).append(w)
        cpu[size].setdefault("split", []).append(c3 - c0)
        wall[size].setdefault("split", []).append(w3 - w0)
        if not split.is_grid:
            refused += 1
            cells += 4
            continue
        for box, true_box in zip(split.cells, truth, strict=True):
            cells += 1
            within += max(abs(a - b) for a, b in zip(box, true_box, strict=True)) <= 2
    cpu_total, wall_total = time.process_time() - cpu_start, time.perf_counter() - wall_start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cut = [name for name, data in others.items() if split_image(data).split.is_grid]
    tracemalloc.start()
    split_image(samples[0][0])
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    print(f"{args.grids} grids ({args.distinct} distinct, {len(names)} layouts, JPEG q60)")
    print(f"  accuracy: {within}/{cells} cells within 2 px of the truth; {refused} grids refused; "
          f"non-grids cut: {len(cut)}/{len(others)}{' ' + ', '.join(cut) if cut else ''}")
    for size in sorted(cpu):
        count = len(cpu[size]["split"])
        print(f"  {size} ({count} grids), ms per grid, median / p95:")
        for name in ("split", *STAGES):
            label = "decode+detect+crop" if name == "split" else name
            print(f"    {label:19s} CPU {_ms(cpu[size][name])}   wall {_ms(wall[size][name])}")
    print(f"  loop: wall {wall_total:.1f} s, CPU {cpu_total:.1f} s (CPU/wall {cpu_total / wall_total:.2f}: below 1, the machine was shared)")
    print(f"  memory: peak RSS {rss_peak / 1024:.0f} MB ({(rss_peak - rss_before) / 1024:+.0f} MB over the loop); "
          f"tracemalloc peak of one split {traced_peak / 1e6:.1f} MB")
    print(f"load after: {_uptime()}")


if __name__ == "__main__":
    main()
