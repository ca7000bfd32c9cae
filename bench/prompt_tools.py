"""Benchmark: the prompt tools (issue 14) — enhancement, the offline compressor, and `check`.

    python bench/prompt_tools.py [--prompts 20] [--providers offline] [--judge offline] [--check-prompts 10000]

Prints three figures, on PartiPrompts prompts in a temporary data folder:

1. enhancement: the same prompts run twice through the same provider chain and judge, one
   iteration each (the score of the first image, which is what enhancement changes), without
   and with ``--enhance``: mean score of each, win rate (prompts whose enhanced first image
   scored higher; ties counted apart), and the extra cost (enhancement calls plus any change in
   generation cost). With the offline stack (the default, no keys) this tests the plumbing: the
   offline renderer and judge read the same lexicon the offline enhancer writes. With keys it
   gives the real figure, e.g. ``--providers fal --judge gemini`` with FAL_KEY, GEMINI_API_KEY
   (and OLLAMA_HOST / OPENAI_API_KEY for the enhancer chain in ``[prompt_tools] enhancers``).
2. compression: the offline extractive compressor on 100 long prompts (PartiPrompts scenes
   concatenated to 3,000–10,000 characters, every other one with mixed scripts) for FLUX's
   window (fal, 256 T5 tokens) and SD's (77 CLIP tokens): mean ratio, element retention, how
   often the window was hit, and the time per prompt.
3. check: wall and CPU time of ``python -m pipeline check`` (in process, --json) on a
   10,000-prompt set against offline,fal,comfyui (target: <= 5 s on one core).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from parti import parti_prompts  # noqa: E402  (bench/ is on sys.path when run as a script)

from pipeline import cli, registry  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.prompts.compression import compress_offline  # noqa: E402
from pipeline.prompts.critical import missing, offline_anchors  # noqa: E402
from pipeline.prompts.promptset import load_file  # noqa: E402
from pipeline.runs.records import RunConfig, create_run, import_prompt_set  # noqa: E402
from pipeline.runs.runner import RunExecutor  # noqa: E402
from pipeline.services.prompt_tools import windows_for  # noqa: E402
from pipeline.store.db import open_database, session  # noqa: E402
from tests.long_prompts import long_prompt  # noqa: E402


def scores_of(prompts: list[dict], providers: list[str], judge: str, enhance: bool) -> tuple[dict[str, float], float, float]:
    """Run ``prompts`` one iteration each; return ({prompt id: score}, total cost, enhancement cost)."""
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["DARKROOM_DATA_DIR"] = tmp
        settings = Settings.from_env()
        engine = open_database(settings)
        set_path = Path(tmp) / "set.json"
        set_path.write_text(json.dumps({"prompts": prompts}), encoding="utf-8")
        with session(engine) as s:
            run = create_run(s, settings, import_prompt_set(s, load_file(set_path)),
                             RunConfig(providers=providers, judge=judge, iterations=1, concurrency=3, enhance=enhance))
            s.commit()
            run_id = run.id
        assert run_id is not None
        outcome = asyncio.run(RunExecutor(engine, settings, run_id).execute())
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT p.key, e.overall_score FROM evaluation e JOIN iteration i ON i.id = e.iteration_id "
                "JOIN run_item r ON r.id = i.run_item_id JOIN prompt p ON p.id = r.prompt_id WHERE i.number = 1").all()
            enhance_cost = conn.exec_driver_sql("SELECT COALESCE(SUM(cost_usd), 0) FROM refinement WHERE from_iteration = 0").scalar()
        engine.dispose()
        return {str(k): float(v) for k, v in rows}, float(outcome.cost_usd), float(enhance_cost or 0.0)


def enhancement(n: int, providers: list[str], judge: str) -> None:
    prompts = [{"id": p["id"], "prompt": p["prompt"]} for p in parti_prompts(n)]
    t0 = time.perf_counter()
    plain, plain_cost, _ = scores_of(prompts, providers, judge, enhance=False)
    enhanced, enhanced_cost, enhance_cost = scores_of(prompts, providers, judge, enhance=True)
    both = sorted(set(plain) & set(enhanced))
    wins = sum(enhanced[k] > plain[k] for k in both)
    ties = sum(enhanced[k] == plain[k] for k in both)
    print(f"1. enhancement ({len(both)} prompts, providers {','.join(providers)}, judge {judge}, 1 iteration; "
          f"{time.perf_counter() - t0:.1f}s):")
    print(f"   mean score without {statistics.fmean(plain[k] for k in both):.2f}, with {statistics.fmean(enhanced[k] for k in both):.2f}")
    print(f"   win rate {wins / len(both):.0%} ({wins} wins, {ties} ties, {len(both) - wins - ties} losses)")
    print(f"   extra cost ${enhanced_cost - plain_cost:.4f} (enhancement calls ${enhance_cost:.4f}; run ${plain_cost:.4f} -> ${enhanced_cost:.4f})")


def compression(n: int) -> None:
    settings = Settings.from_env()
    windows = windows_for(settings, ["fal", "comfyui"])
    print(f"2. offline compressor on {n} long prompts (3,000–10,000 characters; every other with mixed scripts):")
    for window in windows:
        ratios, kept, total, hits, seconds = [], 0, 0, 0, []
        for i in range(n):
            text = long_prompt(3000 + (i * 7919) % 7001, i * 13, mixed=i % 2 == 1)
            anchors = offline_anchors(text)
            t0 = time.perf_counter()
            result = compress_offline(text, anchors, lambda t, w=window: not w.fit(t).over_window)
            seconds.append(time.perf_counter() - t0)
            ratios.append(result.ratio)
            total += len(anchors)
            kept += len(anchors) - len(missing(anchors, result.text))
            hits += result.window_hit
        print(f"   {window.provider} ({window.chars:,} chars / {window.tokens} {window.tokenizer} tokens): mean ratio "
              f"{statistics.fmean(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); elements kept {kept}/{total} "
              f"({kept / total:.1%}); window hit {hits}/{n}; {statistics.median(seconds) * 1000:.0f} ms median per prompt")


def check_time(n: int) -> None:
    prompts = parti_prompts(n)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        path = Path(tmp) / "set.json"
        path.write_text(json.dumps({"prompts": prompts}), encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        t0, cpu0 = time.perf_counter(), time.process_time()
        code = cli.main(["check", str(path), "--providers", "offline,fal,comfyui", "--json"], out=out, err=err)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    report = json.loads(out.getvalue())
    print(f"3. check on {n:,} prompts against offline,fal,comfyui: {wall:.2f}s wall, {cpu:.2f}s CPU (target <= 5 s on one core); "
          f"exit {code}, {report['errors']} errors, {report['warnings']:,} warnings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=20, help="prompts for the enhancement comparison")
    parser.add_argument("--providers", default="offline")
    parser.add_argument("--judge", default="offline")
    parser.add_argument("--long-prompts", type=int, default=100)
    parser.add_argument("--check-prompts", type=int, default=10_000)
    args = parser.parse_args()
    registry.ensure_loaded()
    enhancement(args.prompts, [p.strip() for p in args.providers.split(",") if p.strip()], args.judge)
    compression(args.long_prompts)
    check_time(args.check_prompts)


if __name__ == "__main__":
    main()
