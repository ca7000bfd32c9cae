"""Benchmark: prune at the size of months of use, and the storage a real run takes (issue 18's figures).

    python bench/prune.py [--images 50000]          prune: time and peak memory
    python bench/prune.py --storage 200             bytes per image of a real offline run of N prompts x 2

1. prune: seeds a temporary data folder with ``--images`` generated images to prune (plus 1 %
   more that are approved and must stay): prompts x 2 iterations, every one with a small image
   file, a thumbnail row, an evaluation; rows are bulk-inserted (the run itself is not what is
   measured). Then ``python -m pipeline prune --older-than 0`` runs in a fresh process: its
   wall time and its peak resident memory (VmHWM) are printed. Then ``doctor --no-hashes`` must
   find the tree clean. Targets (issue 18): <= 30 s and <= 200 MB.
2. storage: a real run of N PartiPrompts x 2 iterations through the offline provider, judge and
   refiner (1024x1024 JPEG images, 320 px thumbnails, sidecars), then ``du``: bytes per image on
   disk (image, sidecars, run.json) and in the database (the whole SQLite file / images), and the
   extrapolation to a 3,200-prompt x 2 run.
Set BENCH_TMP to choose where the data folder goes (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

THUMB = bytes(range(256)) * 40  # ~10 KB, a 320 px WebP's size
IMAGE = bytes(range(256)) * 16  # 4 KB per file: what is measured is the bookkeeping, not the disk's write speed


def seed(images: int) -> int:
    """Bulk-insert a finished run of images/2 prompts x 2 iterations, 1 % approved; returns the run id."""
    import sqlalchemy as sa

    from pipeline.config import Settings
    from pipeline.runs.projects import ensure_project
    from pipeline.store.db import open_database, session
    from pipeline.store.models import PromptSet, Run, utcnow

    settings = Settings.from_env()
    engine = open_database(settings)
    prompts = images // 2 + images // 198 + 1  # 1 % more images are approved, and stay
    old = utcnow() - timedelta(days=30)
    with session(engine) as s:
        project = ensure_project(s, settings, "bench")
        ps = PromptSet(name="bench", sha256="bench", prompt_count=prompts)
        s.add(ps)
        s.flush()
        run = Run(prompt_set_id=ps.id or 0, name="bench", status="completed", project_id=project.id,
                  created_at=old, started_at=old, finished_at=old)
        s.add(run)
        s.flush()
        run.output_dir = f"runs/{project.slug}/{run.id}"
        s.commit()
        run_id, ps_id = run.id or 0, ps.id or 0
    folder = settings.runs_dir / project.slug / str(run_id)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO prompt (id, prompt_set_id, position, key, title, scene, mood, prompt, negative_prompt, "
                             "tags, meta) VALUES (:i, :ps, :i, :k, '', '', '', :p, '', '[]', '{}')"),
                     [{"i": i + 1, "ps": ps_id, "k": f"p{i:06d}", "p": f"prompt {i}"} for i in range(prompts)])
        conn.execute(sa.text("INSERT INTO run_item (id, run_id, prompt_id, status, final_iteration, best_score, cost_usd, "
                             "error_kind, error_message, stop_reason) VALUES (:i, :r, :i, 'completed', 2, 7.0, 0, '', '', 'iterations_done')"),
                     [{"i": i + 1, "r": run_id} for i in range(prompts)])
        rows = [{"id": 2 * i + n, "item": i + 1, "n": n, "path": f"results/p{i:06d}/iteration_{n}.png", "at": old}
                for i in range(prompts) for n in (1, 2)]
        conn.execute(sa.text("INSERT INTO iteration (id, run_item_id, number, prompt_text, negative_prompt, provider, model, parameters, "
                             "status, image_path, mime_type, sha256, byte_size, error_kind, error_message, started_at, finished_at, "
                             "routing, request_id, source_url, service_meta) VALUES (:id, :item, :n, 'p', '', 'offline', 'm', '{}', "
                             "'ok', :path, 'image/png', '', 4096, '', '', :at, :at, '{}', '', '', '{}')"), rows)
        conn.execute(sa.text("INSERT INTO thumbnail (iteration_id, mime_type, width, height, data) VALUES (:id, 'image/webp', 320, 320, :d)"),
                     [{"id": r["id"], "d": THUMB} for r in rows])
        conn.execute(sa.text("INSERT INTO rating (iteration_id, reviewer, stars, decision, note, rated_at, decided_at) "
                             "VALUES (:id, 'bench', 5, 'approved', '', :at, :at)"), [{"id": r["id"], "at": old} for r in rows[::100]])
    for r in rows:
        path = folder / str(r["path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(IMAGE)
    print(f"seeded: {prompts:,} prompts x 2 = {len(rows):,} images ({len(rows[::100]):,} approved) in {time.perf_counter() - t0:.0f} s")
    return run_id


def bench_prune(images: int) -> None:
    seed(images)
    script = ("import sys, time; sys.argv = ['pipeline', 'prune', '--older-than', '0']; from pipeline.cli import main; "
              "t = time.perf_counter(); code = main(); took = time.perf_counter() - t; "
              "hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')) / 1000; "
              "print(f'PRUNE {code} {took:.2f} {hwm:.0f}')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    line = next((x for x in done.stdout.splitlines() if x.startswith("PRUNE")), "")
    if not line:
        print(done.stdout, done.stderr)
        raise SystemExit("the prune failed")
    _, code, took, hwm = line.split()
    print(next(x for x in done.stdout.splitlines() if x.startswith("Freed")))
    print(f"prune: exit {code}, {float(took):.1f} s (whole command, start-up excluded), peak memory {hwm} MB  "
          f"[targets <= 30 s, <= 200 MB]")
    check = subprocess.run([sys.executable, "-m", "pipeline", "doctor", "--no-hashes"], capture_output=True, text=True, cwd=ROOT)
    print(f"doctor after the prune: {check.stdout.strip().splitlines()[-1]}")


def bench_storage(prompts: int) -> None:
    from parti import parti_prompts

    from pipeline.config import Settings
    from pipeline.prompts.promptset import validate_document
    from pipeline.runs import control
    from pipeline.runs.records import RunConfig
    from pipeline.runs.runner import RunExecutor
    from pipeline.runs.usage import storage_report
    from pipeline.store.db import open_database

    settings = Settings.from_env()
    engine = open_database(settings)
    spec = validate_document({"name": "storage", "prompts": parti_prompts(prompts)})
    run_id = control.launch(engine, settings, spec, RunConfig(iterations=2, concurrency=3), project="storage")
    t0 = time.perf_counter()
    outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
    took = time.perf_counter() - t0
    report = storage_report(engine, settings)
    (run,) = report.runs
    images = run.images or 1
    db = report.database_bytes or 0
    print(f"run: {outcome.completed} of {prompts} prompts x 2 iterations, {run.images:,} images, {took:.0f} s")
    print(f"on disk: {run.disk_bytes:,} bytes = {run.disk_bytes / images / 1e3:,.1f} kB per image (image, sidecars, run.json)")
    print(f"database file: {db:,} bytes = {db / images / 1e3:,.1f} kB per image (of which thumbnails "
          f"{run.thumbnail_bytes / images / 1e3:,.1f} kB)")
    scale = 3200 * 2 / images
    print(f"extrapolated to 3,200 prompts x 2 ({3200 * 2:,} images): {run.disk_bytes * scale / 1e9:,.2f} GB on disk, "
          f"{db * scale / 1e6:,.0f} MB of database")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000, help="images the prune removes (default: %(default)s)")
    parser.add_argument("--storage", type=int, metavar="PROMPTS", help="measure a real offline run of PROMPTS x 2 instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["DARKROOM_DATA_DIR"] = str(Path(tmp) / "data")
        os.environ.pop("DARKROOM_DATABASE_URL", None)
        if args.storage:
            sys.path.insert(0, str(ROOT / "bench"))
            bench_storage(args.storage)
        else:
            bench_prune(args.images)


if __name__ == "__main__":
    main()
