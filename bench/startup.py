"""Benchmark: start-up and first image (issue 17), in Chromium.

    python bench/startup.py [--runs 5] [--floor-runs 3] [--launches 3]

1. ``streamlit run app.py`` -> first page interactive: the clock starts when the server process
   is started (Chromium already open, as a user's browser is), and stops when the page is
   connected, its script has finished (``data-test-script-state=notRunning``) and the sidebar's
   Gallery link is visible. Each of ``--runs`` fresh server starts (a fresh data folder each: a
   first start, the database created) is printed, then the median. Beside it, the same clock
   on a trivial two-page Streamlit app: Streamlit's own floor on this machine.
2. launch -> first thumbnail visible in an already-open Gallery, without a click: the Gallery is
   open in one tab on an empty data folder; in another tab (another session) the New run page
   launches the 12-prompt sample (seed.json) on the offline stack; the clock starts at the click on
   "Launch run" and stops when the Gallery tab shows the first thumbnail, loaded, with nobody
   touching that tab. Median over ``--launches`` (a fresh server and data folder each).

Wall-clock figures depend on the load (printed with each); the figures that do not are printed
first: the CPU time and module count of the imports, and the server's CPU seconds up to interactive.
Targets (issue 17): <= 2.0 s to interactive; <= 1.5 s launch -> first thumbnail, without a click.
Needs Debian's chromium (/usr/bin/chromium, or DARKROOM_CHROMIUM) and playwright.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SAMPLE = ROOT / "data" / "samples" / "seed.json"  # 12 prompts
TRIVIAL_APP = '''import streamlit as st

def runs() -> None:
    st.title("Runs")

def gallery() -> None:
    st.title("Gallery")

st.navigation([st.Page(runs, title="Runs", default=True), st.Page(gallery, title="Gallery")]).run()
'''
# Run in a fresh interpreter: CPU seconds and modules of `import streamlit`, of the server's import of
# app.py, and of what the first script run adds (the router's and the Runs page's modules, the registry).
IMPORT_PROBE = '''
import json, sys, time
t = time.process_time(); import streamlit; a = time.process_time() - t; na = len(sys.modules)
t = time.process_time(); import app; b = time.process_time() - t; nb = len(sys.modules)
t = time.process_time()
import importlib
for m in app.WARM_UP_MODULES: importlib.import_module(m)
from pipeline import registry; registry.ensure_loaded()
c = time.process_time() - t; nc = len(sys.modules)
heavy = [m for m in ("openai", "google.genai", "boto3", "fastapi", "pandas", "pyarrow", "numpy", "plotly") if m in sys.modules]
print(json.dumps({"streamlit": [a, na], "server": [b, nb - na], "first_run": [c, nc - nb], "loaded": heavy}))
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PYCACHE = Path(tempfile.gettempdir()) / "darkroom-bench-pycache"


def env_for(data_dir: Path) -> dict[str, str]:
    """A first start's environment. Compiled bytecode is kept (outside the checkout), as on any
    install: without it every start compiles Darkroom's ~300 modules again (about 0.8 s of CPU)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_") and k != "PYTHONDONTWRITEBYTECODE"}
    env.update({"DARKROOM_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT), "PYTHONPYCACHEPREFIX": str(PYCACHE)})
    for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "GOOGLE_API_KEY", "FAL_KEY"):  # a first start: no keys set
        env.pop(key, None)
    return env


def start_server(script: Path, data_dir: Path, port: int, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=script.parent, env=env_for(data_dir), stdout=log, stderr=subprocess.STDOUT)


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_to_interactive(browser: Any, script: Path, tmp: Path, label: str) -> tuple[float, float]:
    """(seconds from process start to interactive, the server's CPU seconds by then)."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=tmp))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    page = browser.new_page()
    with (data_dir / "server.log").open("w") as log:
        t0 = time.perf_counter()
        proc = start_server(script, data_dir, port, log)
        try:
            wait_healthy(url, proc)
            page.goto(url)
            settle(page)
            page.get_by_role("link", name="Gallery").first.wait_for(state="visible", timeout=60_000)
            return time.perf_counter() - t0, cpu_seconds(proc.pid)
        finally:
            page.close()
            stop(proc)


def thumbnail_loaded(page: Any, deadline: float) -> bool:
    """Wait (without touching the page) until a card's thumbnail has loaded; False at the deadline."""
    thumb = page.locator("[data-testid=drCard] img.dr-thumb").first  # inside the grid component (Playwright pierces it)
    while time.perf_counter() < deadline:
        try:
            if thumb.count() and thumb.evaluate("i => i.complete && i.naturalWidth > 0"):
                return True
        except Exception as e:  # noqa: BLE001 (the grid redrawn between count and evaluate: look again)
            if "Target" in str(e) and "closed" in str(e):
                raise
        time.sleep(0.02)
    return False


def pipeline_marks(data_dir: Path, clicked: float) -> str:
    """Where the time went, from the run's own rows: created, started, first image made (s after the click)."""
    with sqlite3.connect(data_dir / "darkroom.db") as db:
        row = db.execute("SELECT r.created_at, r.started_at, (SELECT min(i.finished_at) FROM iteration i JOIN run_item ri "
                         "ON ri.id = i.run_item_id WHERE ri.run_id = r.id AND i.status = 'ok') FROM run r ORDER BY r.id LIMIT 1").fetchone()
    if not row:
        return "no run"
    marks = [datetime.fromisoformat(v).replace(tzinfo=timezone.utc).timestamp() - clicked if v else None for v in row]
    return ", ".join(f"{name} {m:.2f}" for name, m in zip(("queued", "started", "first image made"), marks, strict=True) if m is not None)


def first_thumbnail(browser: Any, tmp: Path, wait_s: float) -> tuple[float | None, str]:
    """Launch in one tab, the clock stopped by the first thumbnail in an already-open Gallery tab."""
    data_dir = Path(tempfile.mkdtemp(prefix="gallery-", dir=tmp))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (data_dir / "server.log").open("w") as log:
        proc = start_server(ROOT / "app.py", data_dir, port, log)
        gallery, launcher = browser.new_page(), browser.new_page()
        try:
            wait_healthy(url, proc)
            gallery.goto(f"{url}/gallery")
            settle(gallery)
            gallery.get_by_text("Nothing to review yet").wait_for(timeout=60_000)
            launcher.goto(f"{url}/new_run")
            settle(launcher)
            launcher.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(SAMPLE))
            launcher.get_by_text("prompt(s)").first.wait_for(timeout=60_000)
            settle(launcher)
            time.sleep(2.5)  # the Gallery tab idles a few timer ticks first, as it would have
            t0, clicked = time.perf_counter(), time.time()
            launcher.get_by_role("button", name="Launch run").click()
            seconds = time.perf_counter() - t0 if thumbnail_loaded(gallery, t0 + wait_s) else None
            return seconds, pipeline_marks(data_dir, clicked)
        finally:
            gallery.close()
            launcher.close()
            stop(proc)


def import_figures(*, bytecode: bool = True) -> dict[str, Any]:
    env = env_for(Path(tempfile.mkdtemp()))
    if not bytecode:  # as this sandbox runs Python: Darkroom's own modules compiled at every start
        env.pop("PYTHONPYCACHEPREFIX")
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def sdk_import_s() -> float:
    code = "import time; t = time.process_time(); import openai, google.genai; print(time.process_time() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(times: list[float]) -> str:
    return f"median {statistics.median(times):.2f} s (each: {', '.join(f'{t:.2f}' for t in times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh starts of app.py")
    parser.add_argument("--floor-runs", type=int, default=3, help="fresh starts of a trivial Streamlit app (0: skip)")
    parser.add_argument("--launches", type=int, default=3, help="launch -> first thumbnail measurements (0: skip)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the first thumbnail without a click")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium) or set DARKROOM_CHROMIUM")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-startup-", dir=os.environ.get("BENCH_TMP")))
    print(f"{os.cpu_count()} CPU(s); {load()} at the start; logs in {tmp}", flush=True)
    compiling = import_figures(bytecode=False)
    import_figures()  # fills the bytecode cache the servers below use
    imports = import_figures()
    print("imports, CPU seconds (not wall clock) and modules, in a fresh interpreter:", flush=True)
    print(f"  (with no bytecode cache, e.g. PYTHONDONTWRITEBYTECODE=1, the first run's modules take {compiling['first_run'][0]:.2f} s)")
    print(f"  import streamlit (Streamlit's own floor): {imports['streamlit'][0]:.2f} s, {imports['streamlit'][1]} modules")
    print(f"  the server's import of app.py:             {imports['server'][0]:.2f} s, +{imports['server'][1]} modules")
    print(f"  the first script run's modules (warm-up):  {imports['first_run'][0]:.2f} s, +{imports['first_run'][1]} modules "
          f"(loaded on a thread while the browser loads the page)")
    print(f"  of the heavy ones, loaded by then: {', '.join(imports['loaded']) or 'none'} (plotly: by Streamlit itself)")
    print(f"  the openai and google-genai SDKs: {sdk_import_s():.2f} s CPU (only when their service is used)", flush=True)
    trivial = tmp / "trivial_app.py"
    trivial.write_text(TRIVIAL_APP, encoding="utf-8")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            if args.floor_runs:
                floor = [time_to_interactive(browser, trivial, tmp, "trivial") for _ in range(args.floor_runs)]
                print(f"a trivial two-page Streamlit app -> interactive (Streamlit's floor): {describe([f[0] for f in floor])}, "
                      f"server CPU median {statistics.median(f[1] for f in floor):.2f} s; {load()}", flush=True)
            times, cpu = [], []
            for run in range(1, args.runs + 1):
                wall, server_cpu = time_to_interactive(browser, ROOT / "app.py", tmp, f"tti-{run}")
                times.append(wall)
                cpu.append(server_cpu)
                print(f"  start {run}: {wall:.2f} s to interactive, server CPU {server_cpu:.2f} s; {load()}", flush=True)
            if times:
                print(f"streamlit run app.py -> first page interactive: {describe(times)}; server CPU median {statistics.median(cpu):.2f} s "
                      "(target <= 2.0 s)", flush=True)
            shown = []
            for n in range(1, args.launches + 1):
                seconds, marks = first_thumbnail(browser, tmp, args.wait)
                print(f"  launch {n}: " + (f"{seconds:.2f} s" if seconds is not None else f"not shown within {args.wait:g} s") +
                      f" (after the click: {marks}); {load()}", flush=True)
                if seconds is not None:
                    shown.append(seconds)
            if args.launches:
                print("launch -> first thumbnail in an open Gallery, no click: " +
                      (describe(shown) if shown else "never shown by itself") +
                      (f", {args.launches - len(shown)} not shown" if shown and len(shown) < args.launches else "") + " (target <= 1.5 s)")
        finally:
            browser.close()


if __name__ == "__main__":
    main()
