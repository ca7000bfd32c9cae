"""Benchmark: start-up and first image (issue 17), in Chromium.

    python bench/startup.py [--runs 5]

1. ``streamlit run app.py`` -> first page interactive: the clock starts when the server process
   is started (Chromium already open, as a user's browser is), and stops when the page is
   connected, its script has finished (``data-test-script-state=notRunning``) and the sidebar's
   navigation can be clicked. Median, min and max over ``--runs`` fresh server starts; the import
   time of the vendor SDKs is shown beside it (they are imported only when their service is used).
2. launch -> first thumbnail visible in the Gallery without a click: with the Gallery open in
   Chromium on an empty data folder, a run of 4 PartiPrompts x 2 iterations on the offline stack
   is launched (``python -m pipeline run``, the same data folder); the clock stops when the first
   thumbnail image has loaded on the page, with nobody touching it. Given up after ``--wait`` s.

Targets (issue 17): <= 2.0 s to interactive; <= 1.5 s launch -> first thumbnail, without a click.
Needs Debian's chromium (/usr/bin/chromium, or DARKROOM_CHROMIUM) and playwright.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update({"DARKROOM_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)})
    for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "FAL_KEY"):  # a first start: no keys set
        env.pop(key, None)
    return env


def start_server(data_dir: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env_for(data_dir), stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError("streamlit did not start")


def settle(page: Any) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=60_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def time_to_interactive(browser: Any, tmp: Path, run: int) -> float:
    data_dir = tmp / f"tti-{run}"
    data_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page = browser.new_page()
    with (tmp / f"tti-{run}.log").open("w") as log:
        t0 = time.perf_counter()
        proc = start_server(data_dir, port, log)
        try:
            wait_healthy(url, proc)
            page.goto(url)
            settle(page)
            page.get_by_role("link", name="Gallery").first.wait_for(state="visible", timeout=60_000)
            return time.perf_counter() - t0
        finally:
            page.close()
            stop(proc)


def first_thumbnail(browser: Any, tmp: Path, wait_s: float) -> float | None:
    sys.path.insert(0, str(ROOT / "bench"))
    from parti import parti_prompts

    data_dir = tmp / "gallery"
    data_dir.mkdir()
    prompt_set = tmp / "four.json"
    prompt_set.write_text(json.dumps({"prompts": [{"id": p["id"], "prompt": p["prompt"]} for p in parti_prompts(4)]}), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page = browser.new_page()
    with (tmp / "gallery.log").open("w") as log:
        proc = start_server(data_dir, port, log)
        try:
            wait_healthy(url, proc)
            page.goto(f"{url}/gallery")
            settle(page)
            t0 = time.perf_counter()
            launch = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(prompt_set), "--iterations", "2"], cwd=ROOT,
                                      env=env_for(data_dir), stdout=log, stderr=subprocess.STDOUT)
            try:
                page.wait_for_function("() => [...document.querySelectorAll('img.dr-thumb')].some(i => i.complete && i.naturalWidth > 0)",
                                       timeout=wait_s * 1000, polling=50)
                return time.perf_counter() - t0
            except Exception as e:  # noqa: BLE001 (playwright's TimeoutError: not visible without a click)
                if "Timeout" not in type(e).__name__:
                    raise
                return None
            finally:
                launch.wait(120)
        finally:
            page.close()
            stop(proc)


def sdk_import_s() -> float:
    code = "import time; t = time.perf_counter(); import openai, google.genai; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the first thumbnail without a click")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium) or set DARKROOM_CHROMIUM")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-startup-", dir=os.environ.get("BENCH_TMP")))
    print(f"{os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.2f} at the start; logs in {tmp}", flush=True)
    print(f"importing the openai and google-genai SDKs takes {sdk_import_s():.2f} s (not at start-up: only when their service is used)",
          flush=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            times = []
            for run in range(1, args.runs + 1):
                times.append(time_to_interactive(browser, tmp, run))
                print(f"  start {run}: {times[-1]:.2f} s to interactive (load {os.getloadavg()[0]:.2f})", flush=True)
            print(f"streamlit run app.py -> first page interactive: median {statistics.median(times):.2f} s, min {min(times):.2f}, "
                  f"max {max(times):.2f} over {len(times)} runs (target <= 2.0 s)")
            shown = first_thumbnail(browser, tmp, args.wait)
            print("launch -> first thumbnail in the Gallery, no click: " + (f"{shown:.2f} s (target <= 1.5 s)" if shown is not None else
                  f"not shown within {args.wait:g} s (the Gallery did not refresh by itself)") + f"; load {os.getloadavg()[0]:.2f}")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
