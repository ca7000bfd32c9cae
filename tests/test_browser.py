"""The whole review path in a real browser: `streamlit run app.py`, driven by Playwright in headless Chromium.

Upload a sample prompt set, launch it on the offline stack, wait on Runs until it completes,
rate and approve an image in the Gallery, build and download the zip, and check its manifest.
A screenshot of every page goes to ``test-artifacts/`` (set DARKROOM_DOCS_SCREENSHOTS=1 to
refresh the README's in ``docs/``). Needs Debian's chromium (``.ci/run`` installs it); without it the
test is skipped, unless DARKROOM_REQUIRE_BROWSER=1 (as in CI) makes that a failure.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, SAMPLES, subprocess_env

CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("DARKROOM_ARTIFACTS", ROOT / "test-artifacts"))
DOCS_SHOTS = {"gallery", "gallery_detail"}  # the ones the README shows
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]

if not CHROMIUM.exists():
    if os.environ.get("DARKROOM_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    log = (tmp_path / "streamlit.log").open("w")
    env = subprocess_env(tmp_path / "data")
    env.pop("DARKROOM_PLUGINS")  # the real app: offline stack only
    proc = subprocess.Popen(
        [PYTHON, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("streamlit did not start:\n" + (tmp_path / "streamlit.log").read_text())
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def page(server: str) -> Iterator["sync_api.Page"]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(server)
        try:
            yield pg
        finally:
            context.close()
            browser.close()


def settle(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']")
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.querySelectorAll('[data-testid=stMain], [data-testid=stAppViewContainer]').forEach(e => e.scrollTo(0, 0))")
    page.wait_for_timeout(800)  # let tables and charts draw
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("DARKROOM_DOCS_SCREENSHOTS") == "1" and name in DOCS_SHOTS:
        shutil.copy(ARTIFACTS / f"{name}.png", ROOT / "docs" / f"{name}.png")


def go(page, title: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()
    settle(page)


def test_upload_launch_review_and_export_in_chromium(page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settle(page)
    page.get_by_label("Your name (reviewer)", exact=True).fill("Ana")
    page.get_by_label("Your name (reviewer)", exact=True).press("Enter")
    settle(page)

    go(page, "New run")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(SAMPLES / "seed.json"))
    page.get_by_text("12 prompt(s)").wait_for()
    settle(page)
    shoot(page, "new_run")
    page.get_by_role("button", name="Launch run").click()

    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    page.get_by_text("12 completed of 12").first.wait_for(timeout=120_000)
    page.get_by_role("button", name="Resume").wait_for()  # drawn once the run is no longer active
    settle(page)
    shoot(page, "runs")

    go(page, "Gallery")
    caption = page.get_by_text(re.compile(r"image\(s\) · page 1 of 1"))
    caption.wait_for()
    images = int(caption.inner_text().split()[0])
    assert 12 <= images <= 24  # a prompt may stop after one iteration
    assert page.get_by_test_id("stImage").count() == images
    shoot(page, "gallery")
    page.get_by_test_id("stMain").get_by_role("button", name="Open", exact=True).first.click()
    page.get_by_role("heading", name="Iteration 1").wait_for()
    settle(page)
    first = page.get_by_test_id("stColumn").filter(has=page.get_by_role("heading", name="Iteration 1"))
    first.get_by_test_id("stFeedback").get_by_test_id("stFeedbackButton").nth(4).click()  # five stars
    settle(page)
    first.get_by_role("button", name="Approve").click()
    settle(page)
    first.get_by_label("Note", exact=True).fill("hero shot")
    first.get_by_label("Note", exact=True).press("Enter")
    settle(page)
    shoot(page, "gallery_detail")

    go(page, "Export")
    page.get_by_role("button", name="Build zip").click()
    page.get_by_text("1 image(s)").wait_for()
    settle(page)
    shoot(page, "export")
    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").get_by_role("button").click()
    saved = tmp_path / "approved.zip"
    first_id = json.loads((SAMPLES / "seed.json").read_text())["prompts"][0]["id"]
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        names = zf.namelist()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist() if not i.filename.startswith("manifest"))
    assert {"manifest.csv", "manifest.json"} <= set(names)
    assert len(rows) == 1
    row = rows[0]
    assert (row["prompt_id"], row["iteration"], row["decision"], row["reviewer"], row["stars"], row["note"]) == (
        first_id, "1", "approved", "Ana", "5", "hero shot")
    assert row["file"] in names and row["provider"] == "offline"

    go(page, "Providers")
    page.get_by_text("Calls logged").wait_for()
    page.locator(".js-plotly-plot").first.wait_for()
    shoot(page, "providers")
    go(page, "Settings")
    page.get_by_text("Data folder").wait_for()
    shoot(page, "settings")
