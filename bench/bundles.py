"""Benchmark: peak memory and time reading a 50-MB reference bundle (issue 13's figure).

    python bench/bundles.py [--mb 50]

Builds a zip bundle of about ``--mb`` megabytes: a prompt set whose prompts each name one
reference image, the images PNG noise (incompressible, so the zip is as big as its contents).
Then, each in a fresh process so that one does not inherit the other's heap, prints:

1. path: the CLI's way, ``load_source(bundle.zip)`` (the zip read member by member from disk);
2. upload: the New run page's way, ``load_upload(bytes)`` (the whole zip already in memory, as
   an upload is, and counted);
3. store: ``store_references`` writing the images to a data folder (what a launch does next).

For each: wall time; peak growth of the resident set (``ru_maxrss`` after minus before); and the
peak of Python's own allocations (tracemalloc). Target (issue 13): peak memory <= 2x the bundle.
Set BENCH_TMP to choose where the files go (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

IMAGE_SIDE = 800  # 800x800 RGB noise: ~1.9 MB as PNG


def build(path: Path, megabytes: int) -> int:
    """Write a bundle of about ``megabytes`` MB; return its size in bytes."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(13)
    target, written, n = megabytes * 1_000_000, 0, 0
    prompts = []
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        while written < target:
            pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
            out = io.BytesIO()
            Image.fromarray(pixels).save(out, format="PNG", compress_level=1)
            z.writestr(f"images/ref_{n:03d}.png", out.getvalue())
            prompts.append({"id": f"p{n:03d}", "prompt": f"Scene {n} in the style of the reference",
                            "reference_images": [{"path": f"images/ref_{n:03d}.png", "role": "style"}]})
            written += len(out.getvalue())
            n += 1
        z.writestr("prompts.json", json.dumps({"name": "bench bundle", "prompts": prompts}))
    return path.stat().st_size


def measure(mode: str, bundle: Path, data_dir: Path) -> dict[str, float]:
    """Run in a fresh process: one load (and, for ``store``, the write), with its figures."""
    import tracemalloc

    from pipeline.config import Settings
    from pipeline.prompts.bundle import BundleLimits, load_source, load_upload
    from pipeline.prompts.promptset import Limits
    from pipeline.store.references import store_references

    settings = Settings.from_env({"DARKROOM_DATA_DIR": str(data_dir)})
    limits, bundle_limits = Limits.from_settings(settings), BundleLimits.from_settings(settings)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    t0 = time.perf_counter()
    if mode == "upload":
        raw = bundle.read_bytes()
        spec = load_upload(raw, bundle.name, limits, bundle_limits)
    else:
        spec = load_source(bundle, limits, bundle_limits)
    if mode == "store":
        store_references(settings.data_dir, spec)
    seconds = time.perf_counter() - t0
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return {"seconds": seconds, "rss_growth": rss_growth, "python_peak": peak_py, "references": len(spec.references())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=50, help="bundle size in MB (default 50)")
    parser.add_argument("--measure", nargs=3, metavar=("MODE", "BUNDLE", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        mode, bundle, data_dir = args.measure
        print(json.dumps(measure(mode, Path(bundle), Path(data_dir))))
        return 0
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        bundle = Path(tmp) / "bundle.zip"
        size = build(bundle, args.mb)
        print(f"bundle: {size / 1e6:.1f} MB ({bundle.name}, PNG noise, one reference per prompt)")
        print(f"{'mode':<8} {'refs':>5} {'time':>8} {'peak RSS growth':>22} {'peak Python alloc':>22}")
        worst = 0.0
        for mode in ("path", "upload", "store"):
            done = subprocess.run([sys.executable, __file__, "--measure", mode, str(bundle), str(Path(tmp) / f"data_{mode}")],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            r = json.loads(done.stdout)
            peak = max(r["rss_growth"], r["python_peak"])
            worst = max(worst, peak / size)
            print(f"{mode:<8} {r['references']:>5} {r['seconds']:>7.2f}s {r['rss_growth'] / 1e6:>9.1f} MB ({r['rss_growth'] / size:.2f}x) "
                  f"{r['python_peak'] / 1e6:>9.1f} MB ({r['python_peak'] / size:.2f}x)")
        verdict = "within" if worst <= 2 else "OVER"
        print(f"worst peak: {worst:.2f}x the bundle ({verdict} the 2x target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
