"""Benchmark: the review desk in a real browser, keyboard only, on a gallery of 2,000+ images (issue 12).

    python bench/review.py [--prompts 1000] [--review 50] [--round-trips 50]

Seeds a temporary data folder through the real pipeline (offline provider and judge, real
1024x1024 images): N PartiPrompts (bench/data, shipped in the repository) x 2 iterations, so
2,000 images by default. Starts ``streamlit run app.py`` on it and drives Debian's Chromium
(/usr/bin/chromium) with Playwright at 1440x900. Prints:

1. keyboard-only review of 50 prompts (stars, a decision, next: 3 keys each): mouse clicks,
   scrolls and keys per prompt, counted by listeners in the page while reviewing
2. app time per prompt, from the → keypress to the next prompt drawn with its full-size images
   decoded (median, p95), when the keys are pressed as the app answers; and the same when all
   three keys are typed at once
3. 50 Review → grid → Review round trips from a filtered grid on page 2: how many kept the
   filter, the sort and the page
4. two reviewers in two browser contexts rating the same 20 images at once: ratings kept in the
   database, shown to the other reviewer, and present in the Gallery's "Export" manifest

Targets (issue 12): 0 clicks, 0 scrolls, <= 3 keys per prompt; median <= 0.35 s, p95 <= 0.8 s;
filters and page survive every round trip; all 40 ratings kept and shown, the manifest has both.
Before (issue 12): 40-50 clicks and 23-33 scrolls per 10 prompts, 25.8 s of waiting on the app.
Set BENCH_TMP to choose where the data folder goes (default: the system temp folder).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import registry  # noqa: E402
from pipeline.components import RefinedPrompt, RefinementRequest, Refiner  # noqa: E402

CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1440, "height": 900}
READY = "[data-testid='stApp'][data-test-script-state='notRunning']"

# Counted in the page: trusted mouse clicks, wheel turns, scroll position changes of the main
# area, key presses; and the time of each → press (the app time is measured from it). Installed
# before the app's own scripts, so its listeners run before the desk's (which stops the keys it uses).
COUNTERS = """
(() => {
  const c = window.__bench = { clicks: 0, wheels: 0, scrolls: 0, keys: 0, arrowAt: [] };
  window.addEventListener('mousedown', (e) => { if (e.isTrusted) c.clicks++; }, true);
  window.addEventListener('wheel', (e) => { if (e.isTrusted) c.wheels++; }, { capture: true, passive: true });
  window.addEventListener('keydown', (e) => { c.keys++; if (e.key === 'ArrowRight') c.arrowAt.push(performance.now()); }, true);
  let last = null;
  setInterval(() => {
    const m = document.querySelector('[data-testid=stMain]');
    const y = m ? m.scrollTop : 0;
    if (last !== null && y !== last) c.scrolls++;
    last = y;
  }, 50);
})()
"""
READY_STATE = "() => window.__darkroom && window.__darkroom.ready ? [String(window.__darkroom.ready.item), window.__darkroom.ready.at] : null"


class AlwaysRefiner(Refiner):
    """Adds one phrase per round, so every prompt really gets two iterations."""

    name = "bench-always"
    label = "benchmark refiner"

    async def refine(self, request: RefinementRequest) -> RefinedPrompt:
        return RefinedPrompt(prompt=f"{request.current_prompt} Sharper detail.", rationale="benchmark: always refine")


registry.refiners.register(AlwaysRefiner)


# ---- setup ----------------------------------------------------------------------------------------
def seed(prompts: int) -> int:
    """N PartiPrompts x 2 iterations through the real pipeline; returns the number of images."""
    from parti import parti_prompts  # bench/data/PartiPrompts.tsv, shipped in the repository
    from sqlmodel import func, select

    from pipeline.config import Settings
    from pipeline.prompts.promptset import validate_document
    from pipeline.runs.records import RunConfig, create_run, import_prompt_set
    from pipeline.runs.runner import RunExecutor
    from pipeline.store.db import open_database, session
    from pipeline.store.models import Iteration

    settings = Settings.from_env()
    engine = open_database(settings)
    spec = validate_document({"name": "bench", "prompts": parti_prompts(prompts)})
    with session(engine) as s:
        run = create_run(s, settings, import_prompt_set(s, spec), RunConfig(iterations=2, refiner="bench-always", concurrency=4))
        s.commit()
        run_id = run.id
    t0 = time.perf_counter()
    asyncio.run(RunExecutor(engine, settings, run_id).execute())
    with session(engine) as s:
        images = s.exec(select(func.count()).select_from(Iteration).where(Iteration.status == "ok")).one()
    print(f"seeded: {images:,} images ({prompts:,} prompts x 2 iterations) in {time.perf_counter() - t0:.0f} s")
    engine.dispose()
    return images


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data: Path, app: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "DARKROOM_DATA_DIR": str(data)}
    env.pop("DARKROOM_PLUGINS", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=(data / "streamlit.log").open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("streamlit did not start:\n" + (data / "streamlit.log").read_text())
        time.sleep(0.2)


# ---- the browser ---------------------------------------------------------------------------------
def settle(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector(READY, timeout=60_000)


def reviewer_page(browser, url: str, name: str):  # type: ignore[no-untyped-def]
    """A browser context of its own (own cookies), with the reviewer's name entered once."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.add_init_script(COUNTERS)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{url}/gallery")
    settle(page)
    box = page.get_by_label("Your name (reviewer)", exact=True)
    box.fill(name)
    box.press("Enter")
    settle(page)
    return page


def wait_ready(page, not_item: str | None) -> tuple[str, float]:  # type: ignore[no-untyped-def]
    """Wait for a prompt other than ``not_item`` drawn with its full-size images decoded: (item, time in the page)."""
    try:
        handle = page.wait_for_function(f"(old) => {{ const r = ({READY_STATE})(); return r && r[0] !== old ? r : null; }}",
                                        arg=not_item, timeout=60_000)
    except Exception:  # noqa: BLE001  (say where it stopped, then fail)
        log = Path(os.environ["DARKROOM_DATA_DIR"], "streamlit.log")
        print(f"stopped waiting on {page.url}; last lines of the server log:\n" + log.read_text()[-3000:])
        raise
    item, at = handle.json_value()
    return item, float(at)


def current_item(page) -> str | None:  # type: ignore[no-untyped-def]
    ready = page.evaluate(READY_STATE)
    return ready[0] if ready else None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def keyboard_review(browser, url: str, prompts: int) -> None:  # type: ignore[no-untyped-def]
    """Review ``prompts`` prompts with the keys only, twice: pressed as the app answers, and typed ahead."""
    page = reviewer_page(browser, url, "Ana")
    page.goto(f"{url}/review?sort=prompt&dir=asc&mode=review")
    item, _ = wait_ready(page, None)
    settle(page)
    page.evaluate("Object.assign(window.__bench, {clicks: 0, wheels: 0, scrolls: 0, keys: 0, arrowAt: []})")
    paced, typed = [], []
    for i in range(prompts):
        page.keyboard.press(str(1 + i % 5))
        page.keyboard.press("p" if i % 3 else "x")
        settle(page)
        page.keyboard.press("ArrowRight")
        item, ready_at = wait_ready(page, item)
        paced.append((ready_at - page.evaluate("window.__bench.arrowAt.at(-1)")) / 1000)
        settle(page)
    counts = page.evaluate("window.__bench")
    for i in range(prompts):
        page.keyboard.press(str(1 + i % 5))
        page.keyboard.press("p")
        page.keyboard.press("ArrowRight")
        item, ready_at = wait_ready(page, item)
        typed.append((ready_at - page.evaluate("window.__bench.arrowAt.at(-1)")) / 1000)
    settle(page)
    keys = counts["keys"] / prompts
    print(f"\n1. keyboard-only review of {prompts} prompts (stars + decision + next):")
    print(f"   mouse clicks {counts['clicks']}, scrolls {counts['wheels'] + counts['scrolls']}, keys per prompt {keys:.1f}"
          f"   (target 0, 0, <= 3; before: 40-50 clicks and 23-33 scrolls per 10 prompts)")
    print("2. app time per prompt, → to the next prompt drawn with its full-size images decoded:")
    print(f"   keys pressed as the app answers: median {statistics.median(paced):.3f} s, p95 {pct(paced, 0.95):.3f} s, "
          f"max {max(paced):.3f} s   (target median <= 0.35 s, p95 <= 0.8 s)")
    print(f"   all three keys typed at once:    median {statistics.median(typed):.3f} s, p95 {pct(typed, 0.95):.3f} s, "
          f"max {max(typed):.3f} s")
    page.context.close()


def round_trips(browser, url: str, trips: int) -> None:  # type: ignore[no-untyped-def]
    """Open Review from a filtered grid on page 2 and go back, ``trips`` times, keys only."""
    page = reviewer_page(browser, url, "Ana")
    grid_url = f"{url}/gallery?score=3-10&sort=score&dir=asc&per=24&page=2&size=m"
    page.goto(grid_url)
    settle(page)
    wanted = {"score": "3-10", "sort": "score", "dir": "asc", "per": "24", "page": "2", "size": "m"}
    count_text = page.get_by_test_id("drGalleryCount").inner_text()
    kept, times = 0, []
    for _ in range(trips):
        t0 = time.perf_counter()
        page.keyboard.press("ArrowRight")  # the cursor moves to a card (the first press selects the first)
        page.keyboard.press("Enter")
        wait_ready(page, None)
        page.wait_for_url("**/review?**")
        settle(page)
        page.keyboard.press("g")
        page.get_by_test_id("drGrid").wait_for()
        page.wait_for_url("**/gallery?**")
        settle(page)
        times.append(time.perf_counter() - t0)
        params = dict(p.split("=", 1) for p in page.url.split("?", 1)[1].split("&"))
        if all(params.get(k) == v for k, v in wanted.items()) and "item" not in params \
                and page.get_by_test_id("drGalleryCount").inner_text() == count_text:
            kept += 1
        page.evaluate("window.__darkroom && (window.__darkroom.ready = null)")
    print(f"3. Review → grid → Review round trips from page 2 of a filtered, sorted grid: "
          f"{kept} of {trips} kept the filter, sort and page ({count_text}); median {statistics.median(times):.2f} s per trip")
    page.context.close()


def two_reviewers(browser, url: str) -> None:  # type: ignore[no-untyped-def]
    """Ana and Bo rate the same 20 images (10 prompts x 2 iterations) at once, in two browser contexts."""
    from sqlmodel import select

    from pipeline.config import Settings
    from pipeline.store.db import open_database, session
    from pipeline.store.models import Rating

    selection = "sort=prompt&dir=asc&q=p000"  # p0000–p0009: 10 prompts, 20 images
    pages = {name: reviewer_page(browser, url, name) for name in ("Cy", "Di")}
    for page in pages.values():
        page.goto(f"{url}/review?{selection}&mode=review")
        wait_ready(page, None)
        settle(page)
    stars = {"Cy": ("4", "2"), "Di": ("1", "5")}
    for _ in range(10):  # both at once: each one's keys go out before the other's are answered
        for name, page in pages.items():
            page.keyboard.press(stars[name][0])
            page.keyboard.press("Tab")
            page.keyboard.press(stars[name][1])
            page.keyboard.press("ArrowRight")
    for page in pages.values():
        settle(page)
        page.wait_for_timeout(1500)
        settle(page)
    with session(open_database(Settings.from_env())) as s:
        rows = [r for r in s.exec(select(Rating).where(Rating.reviewer.in_(["Cy", "Di"]))) if r.stars]  # type: ignore[attr-defined]
    by_image = {}
    for r in rows:
        by_image.setdefault(r.iteration_id, {})[r.reviewer] = r.stars
    kept = sum(len(v) for v in by_image.values())
    # shown: each reviewer sees the other's stars, by name, on every one of the 20 images
    shown = {}
    for name, page in pages.items():
        other = "Di" if name == "Cy" else "Cy"
        page.goto(f"{url}/review?{selection}&mode=review")
        item, _ = wait_ready(page, None)
        seen = 0
        for i in range(10):
            cells = page.locator("[data-testid=drIteration]")
            seen += sum(1 for j in range(cells.count()) if f"{other} " in cells.nth(j).inner_text())
            if i < 9:
                settle(page)
                page.keyboard.press("ArrowRight")
                item, _ = wait_ready(page, item)
        shown[name] = seen
    # the manifest of "Export" (this selection) carries both reviewers' columns for all 20 images
    grid = pages["Cy"]
    grid.goto(f"{url}/gallery?{selection}")
    settle(grid)
    with grid.expect_download(timeout=120_000) as download:
        grid.get_by_test_id("stDownloadButton").get_by_role("button", name="Export").click()
    data = Path(download.value.path()).read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        rows_csv = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode("utf-8"))))
    both = sum(1 for r in rows_csv if r.get("Cy: stars") and r.get("Di: stars"))
    print(f"4. two reviewers in two browser contexts rating the same 20 images at once: {kept} of 40 ratings kept, "
          f"{len(by_image)} images; shown by name to the other reviewer: Cy sees Di on {shown['Cy']} of 20, "
          f"Di sees Cy on {shown['Di']} of 20; "
          f"manifest.csv rows with both reviewers' stars: {both} of {len(rows_csv)} (one click on Export, outside the keyboard test)")
    for page in pages.values():
        page.context.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=1000, help="prompts to seed (x 2 iterations; default 1000 = 2,000 images)")
    ap.add_argument("--review", type=int, default=50, help="prompts to review from the keyboard")
    ap.add_argument("--round-trips", type=int, default=50)
    ap.add_argument("--app", type=Path, default=ROOT / "app.py", help="the Streamlit entry point (default: app.py)")
    args = ap.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        data = Path(tmp) / "data"
        os.environ["DARKROOM_DATA_DIR"] = str(data)
        seed(args.prompts)
        proc, url = start_server(data, args.app)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                warm = reviewer_page(browser, url, "warm-up")  # first visits compile Streamlit's bundle and caches
                warm.context.close()
                keyboard_review(browser, url, args.review)
                round_trips(browser, url, args.round_trips)
                two_reviewers(browser, url)
                browser.close()
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
