"""Benchmark: the gallery and the export at the size of a real review (issue 3's figures).

    python bench/gallery.py [--prompts 1000]

Seeds a temporary data folder through the real pipeline (offline provider and judge, real
1024x1024 images and 320 px thumbnails): N PartiPrompts x 2 iterations. The refiner is a
benchmark one that always changes the prompt, so every prompt really gets two iterations.
Then prints:

1. gallery page: server-side time of one Gallery page of 24 thumbnails (a full AppTest script
   run: page script, SQL, element building), over pages spread across the whole set; and the
   SQL part alone
2. detail view: the same for one prompt's detail view (both iterations, diff, checks, review widgets)
3. memory: resident memory while paging through every page, twice
4. export: build_zip of every image (2 per prompt) against `zip -0` of the same files, as
   throughput, best of 3 each; and the export's peak memory growth, in a fresh process

Targets (issue 3): <= 300 ms per gallery page, <= 200 ms per detail view, memory flat while
paging, export >= 80 % of `zip -0` throughput with <= 64 MB peak memory growth.
Set BENCH_TMP to choose where the data folder goes (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline import registry  # noqa: E402
from pipeline.components import RefinedPrompt, RefinementRequest, Refiner  # noqa: E402


class AlwaysRefiner(Refiner):
    """Adds one phrase per round, so the loop never stops early (the seeding needs 2 iterations each)."""

    name = "bench-always"
    label = "benchmark refiner"

    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        return RefinedPrompt(prompt=f"{request.current_prompt} Sharper detail.", rationale="benchmark: always refine")


registry.refiners.register(AlwaysRefiner)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1000


def seed(prompts: int) -> None:
    from pipeline.config import Settings
    from pipeline.prompts.promptset import validate_document
    from pipeline.runs.records import RunConfig, create_run, import_prompt_set
    from pipeline.runs.runner import RunExecutor
    from pipeline.store.db import open_database, session

    sys.path.insert(0, str(ROOT / "bench"))
    from parti import parti_prompts  # bench/data/PartiPrompts.tsv, shipped in the repository

    items = parti_prompts(prompts)
    for i, item in enumerate(items):
        item.setdefault("tags", ["even" if i % 2 == 0 else "odd"])
    settings = Settings.from_env()
    engine = open_database(settings)
    spec = validate_document({"name": "bench", "prompts": items})
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, spec), RunConfig(iterations=2, refiner="bench-always", concurrency=3))
        s.commit()
        run_id = run.id
    t0 = time.perf_counter()
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    print(f"seeded: {outcome.completed} prompts completed in {time.perf_counter() - t0:.0f} s")


def app_timings(pages_to_sample: int = 12, details: int = 20) -> None:
    import streamlit as st
    from sqlmodel import select
    from streamlit.testing.v1 import AppTest

    from pipeline.config import Settings
    from pipeline.review.gallery import GalleryFilter, gallery_page
    from pipeline.store.db import open_database, session
    from pipeline.store.models import RunItem

    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["reviewer"] = "bench"
    at.run()
    at.switch_page("pages/gallery.py").run()
    engine = open_database(Settings.from_env())
    with session(engine) as s:
        total_pages = gallery_page(s, GalleryFilter(), 1, 24).pages
        item_ids = list(s.exec(select(RunItem.id).order_by(RunItem.id)))

    def page_time(n: int) -> float:
        at.session_state["g_page"] = n
        t = time.perf_counter()
        at.run()
        elapsed = time.perf_counter() - t
        assert not at.exception, at.exception
        assert len(at.image) == 24 or n == total_pages, f"page {n} showed {len(at.image)} images"
        return elapsed

    page_time(1)  # warm: imports, first queries
    sample = sorted({1 + round(i * (total_pages - 1) / (pages_to_sample - 1)) for i in range(pages_to_sample)})
    times = [page_time(n) * 1000 for n in sample for _ in range(3)]
    with session(engine) as s:
        sql = []
        for n in sample:
            t = time.perf_counter()
            gallery_page(s, GalleryFilter(), n, 24)
            sql.append((time.perf_counter() - t) * 1000)
    print(f"gallery page ({total_pages} pages of 24, {len(sample)} pages x 3): median {statistics.median(times):.0f} ms, "
          f"p95 {sorted(times)[int(len(times) * 0.95) - 1]:.0f} ms, max {max(times):.0f} ms  (SQL alone: median "
          f"{statistics.median(sql):.1f} ms)  [target <= 300 ms]")

    gc.collect()
    memory = [rss_mb()]
    for _ in range(2):
        for n in range(1, total_pages + 1):
            page_time(n)
        gc.collect()
        memory.append(rss_mb())
    print(f"memory paging through all {total_pages} pages twice: RSS {memory[0]:.0f} MB before, {memory[1]:.0f} MB after "
          f"one pass, {memory[2]:.0f} MB after two (second pass {memory[2] - memory[1]:+.1f} MB)  [target: flat]")

    at.session_state["g_page"] = 1
    detail = []
    step = max(1, len(item_ids) // details)
    for item_id in item_ids[::step][:details]:
        at.query_params["item"] = str(item_id)
        t = time.perf_counter()
        at.run()
        detail.append((time.perf_counter() - t) * 1000)
        assert not at.exception, at.exception
        assert [m.label for m in at.metric] == ["Judge score", "Judge score"], "detail view did not show both iterations"
    print(f"detail view ({len(detail)} prompts): median {statistics.median(detail):.0f} ms, max {max(detail):.0f} ms  "
          f"[target <= 200 ms]")
    st.cache_resource.clear()


def export_figures() -> None:
    from pipeline.config import Settings
    from pipeline.review.export import build_zip, manifest_rows
    from pipeline.store.db import open_database, session

    settings = Settings.from_env()
    engine = open_database(settings)
    with session(engine) as s:
        sources = [str(r["_source"]) for r in manifest_rows(s, settings, [1], selection="all")]
    size = sum(os.path.getsize(p) for p in sources)
    out = Path(tempfile.mkdtemp(dir=os.environ.get("BENCH_TMP")))
    ours, theirs = [], []
    for i in range(3):
        t = time.perf_counter()
        with session(engine) as s:
            result = build_zip(s, settings, [1], out / f"ours{i}.zip", selection="all")
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(["zip", "-0", "-q", str(out / f"zip{i}.zip"), "-@"], input="\n".join(sources).encode(), check=True)
        theirs.append(time.perf_counter() - t)
    best_ours, best_zip = size / min(ours) / 1e6, size / min(theirs) / 1e6
    print(f"export of {result.images} images ({size / 1e6:.0f} MB): build_zip {min(ours):.2f} s = {best_ours:.0f} MB/s; "
          f"zip -0 {min(theirs):.2f} s = {best_zip:.0f} MB/s; ratio {best_ours / best_zip:.2f}  [target >= 0.80]")
    probe = subprocess.run([sys.executable, __file__, "--export-memory"], env=os.environ, capture_output=True, text=True, check=True)
    print(probe.stdout.strip())


def export_memory() -> None:
    """Run in a fresh process: resident memory before the export and the peak during it."""
    from pipeline.config import Settings
    from pipeline.review.export import build_zip
    from pipeline.store.db import open_database, session

    settings = Settings.from_env()
    engine = open_database(settings)
    with session(engine) as s:  # warm the imports and the connection, not the export
        s.connection()
    before = rss_mb()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp, session(engine) as s:
        result = build_zip(s, settings, [1], Path(tmp) / "m.zip", selection="all")
    peak = peak_rss_mb()
    print(f"export memory ({result.images} images): RSS {before:.0f} MB before, peak {peak:.0f} MB, growth {peak - before:.0f} MB"
          f"  [target <= 64 MB]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--export-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export_memory:
        export_memory()
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["DARKROOM_DATA_DIR"] = str(Path(tmp) / "data")
        print(f"{os.cpu_count()} cores; data folder {tmp}")
        seed(args.prompts)
        app_timings()
        export_figures()


if __name__ == "__main__":
    main()
