"""Benchmark: the review desk's queries on a gallery of 2,000+ images with several reviewers.

    python bench/review_queries.py [--prompts 1250] [--iterations 2] [--repeat 15]

Seeds a temporary SQLite database directly (no image generation: this measures SQL only):
N prompts x I iterations, each with a judge score and a 12 KB thumbnail blob, rated by three
reviewers (ana ~60 %, bo ~40 %, cy ~20 % of the images, stars and decisions at random). Then
prints the median and max time of what a page or a key press costs on the server:

- gallery_page (count + one page of 48 cards, thumbnails joined) per sort and for the filters
  "not yet reviewed by me", "disputed", "approved by 2 or more", "majority" rule
- review_position (n of N and prev/next for Review's arrow keys) per sort
- selection_iteration_ids (every matching image, for a bulk action or an export)
- summaries (my rating, the others', the decision in force) for one page of 48 cards
- one star (act + commit), a bulk approve of 1,000 images and its undo (one batch each)

Target (issue 12): a key press answered well within the 0.35 s median budget of a Review step.
Set BENCH_TMP to choose where the database goes (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def seed(engine, prompts: int, iterations: int) -> list[int]:  # type: ignore[no-untyped-def]
    """Bulk-insert the gallery; returns the iteration ids."""
    import sqlalchemy as sa

    from pipeline.store.models import Evaluation, Iteration, Prompt, PromptSet, Rating, Run, RunItem, Thumbnail, utcnow

    rng = random.Random(12)
    now = utcnow()
    thumb = bytes(rng.getrandbits(8) for _ in range(12_000))
    with engine.begin() as conn:
        conn.execute(sa.insert(PromptSet), [{"id": 1, "name": "bench", "source": "", "sha256": "x", "prompt_count": prompts,
                                             "meta": {}, "created_at": now}])
        conn.execute(sa.insert(Prompt), [{"id": i, "prompt_set_id": 1, "position": i, "key": f"p{i:05d}", "title": f"Prompt {i}",
                                          "scene": "", "mood": "", "prompt": f"A lantern number {i}", "negative_prompt": "",
                                          "tags": [], "meta": {}} for i in range(1, prompts + 1)])
        runs = 2
        conn.execute(sa.insert(Run), [{"id": r, "prompt_set_id": 1, "name": f"run {r}", "status": "completed", "config": {},
                                       "output_dir": f"runs/{r}", "created_at": now} for r in range(1, runs + 1)])
        items, its, evals, thumbs = [], [], [], []
        it_id = 0
        for i in range(1, prompts + 1):
            run = 1 + (i % runs)
            scores = [round(rng.uniform(2, 9.8), 2) for _ in range(iterations)]
            items.append({"id": i, "run_id": run, "prompt_id": i, "status": "completed",
                          "final_iteration": scores.index(max(scores)) + 1, "best_score": max(scores), "cost_usd": 0.0,
                          "error_kind": "", "error_message": ""})
            for n, score in enumerate(scores, 1):
                it_id += 1
                its.append({"id": it_id, "run_item_id": i, "number": n, "prompt_text": f"A lantern number {i}, take {n}",
                            "negative_prompt": "", "provider": rng.choice(["offline", "fal"]), "model": "m", "parameters": {},
                            "status": "ok", "image_path": f"results/p{i:05d}/iteration_{n}.jpg", "mime_type": "image/jpeg",
                            "sha256": "h", "error_kind": "", "error_message": "", "started_at": now, "routing": {}})
                evals.append({"iteration_id": it_id, "judge": "offline", "model": "", "overall_score": score, "criteria": {},
                              "checks": [], "issues": [], "top_suggestion": "", "raw_response": "", "created_at": now,
                              "routing": {}})
                thumbs.append({"iteration_id": it_id, "mime_type": "image/jpeg", "width": 320, "height": 320, "data": thumb})
        conn.execute(sa.insert(RunItem), items)
        conn.execute(sa.insert(Iteration), its)
        conn.execute(sa.insert(Evaluation), evals)
        conn.execute(sa.insert(Thumbnail), thumbs)
        ratings = []
        for who, share in (("ana", 0.6), ("bo", 0.4), ("cy", 0.2)):
            for i in range(1, it_id + 1):
                if rng.random() < share:
                    decision = rng.choice(["approved", "rejected", "none"])
                    ratings.append({"iteration_id": i, "reviewer": who, "stars": rng.choice([None, 1, 2, 3, 4, 5]),
                                    "decision": decision, "note": "", "rated_at": now,
                                    "decided_at": None if decision == "none" else now})
        conn.execute(sa.insert(Rating), ratings)
    return list(range(1, it_id + 1))


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=1250)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        os.environ["DARKROOM_DATA_DIR"] = tmp
        os.environ.pop("DARKROOM_DATABASE_URL", None)
        from pipeline.config import Settings
        from pipeline.review.events import act, undo_last
        from pipeline.review.gallery import SORTS, GalleryFilter, Sort, gallery_page, review_position, selection_iteration_ids
        from pipeline.review.ratings import bulk_apply, bulk_scope, summaries
        from pipeline.store.db import open_database, session

        engine = open_database(Settings.from_env())
        t = time.perf_counter()
        images = seed(engine, args.prompts, args.iterations)
        print(f"seeded {len(images):,} images ({args.prompts:,} prompts x {args.iterations}), 3 reviewers, "
              f"in {time.perf_counter() - t:.1f} s; {args.repeat} timed runs each, median / max")

        def show(label: str, fn: Callable[[], object]) -> None:
            med, worst = timed(fn, args.repeat)
            print(f"  {label:<58} {med:7.1f} ms  / {worst:7.1f} ms")

        with session(engine) as s:
            middle = args.prompts // 2
            for key in SORTS:
                show(f"gallery_page 48 cards, sort {key}, page 20",
                     lambda key=key: gallery_page(s, GalleryFilter(), 20, 48, sort=Sort(key), reviewer="ana"))
            for label, f, rule in [("not yet reviewed by me", GalleryFilter(unreviewed=True), "latest"),
                                   ("disputed", GalleryFilter(disputed=True), "latest"),
                                   ("approved by >= 2", GalleryFilter(approved_by=2), "latest"),
                                   ("decision approved, majority rule", GalleryFilter(decisions=("approved",)), "majority"),
                                   ("run 1, score 5-10, best only", GalleryFilter(run_ids=(1,), score_min=5, best_only=True), "latest")]:
                show(f"gallery_page 48 cards, {label}", lambda f=f, rule=rule: gallery_page(s, f, 1, 48, reviewer="ana", rule=rule))
            for key in ("newest", "score", "delta"):
                show(f"review_position (n of N, prev/next), sort {key}",
                     lambda key=key: review_position(s, GalleryFilter(), middle, sort=Sort(key), reviewer="ana"))
            show("review_position, not yet reviewed by me, sort score",
                 lambda: review_position(s, GalleryFilter(unreviewed=True), middle, sort=Sort("score"), reviewer="ana"))
            show("selection_iteration_ids, every image", lambda: selection_iteration_ids(s, GalleryFilter()))
            page_ids = [c.iteration_id for c in gallery_page(s, GalleryFilter(), 3, 48).cards]
            show("summaries of 48 cards (mine, others, in force)", lambda: summaries(s, page_ids, "ana", "majority"))

            stars = iter(random.Random(1).choices(range(1, 6), k=10 * args.repeat))

            def one_star() -> None:
                act(s, "dee", [images[len(images) // 3]], "star", next(stars))
                s.commit()

            show("one star (event + rating row, committed)", one_star)
            bulk_ids = images[:1000]
            t = time.perf_counter()
            scope = bulk_scope(s, iteration_ids=bulk_ids)
            bulk_apply(s, "eve", scope, "approve")
            s.commit()
            bulk_ms = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            undo_last(s, "eve")
            s.commit()
            undo_ms = (time.perf_counter() - t) * 1000
            print(f"  {'bulk approve of 1,000 images (one batch, committed)':<58} {bulk_ms:7.1f} ms")
            print(f"  {'undo of that batch (committed)':<58} {undo_ms:7.1f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
