"""The whole review path in a real browser: `streamlit run app.py`, driven by Playwright in headless Chromium.

Upload a sample prompt set, launch it on the offline stack, wait on Runs until it completes,
rate and approve an image in the Gallery, build and download the zip, and check its manifest;
the Content Security Policy blocks nothing Streamlit itself needs. Every deep link works as
the first visit after a restart, and user text with a markdown image to another host is shown
as text, with the policy refusing that host's images anyway.
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
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, SAMPLES, TEST_DATABASE, chromium, make_prompts, require_chromium, subprocess_env, write_prompt_set
from tests.emulators.imagehost import ImageHostEmulator
from tests.test_ui_hardening import streamlit_server

ARTIFACTS = Path(os.environ.get("DARKROOM_ARTIFACTS", ROOT / "test-artifacts"))
DOCS_SHOTS = {"gallery", "gallery_detail"}  # the ones the README shows

require_chromium()

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path, tmp_path: Path) -> Iterator[str]:
    """A fresh `streamlit run app.py` (a restart, as far as any first visit can tell)."""
    with streamlit_server(data_dir, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def console() -> list[str]:
    """What the browser logged (Content Security Policy refusals among it)."""
    return []


@pytest.fixture
def browser_page(console: list[str]) -> Iterator["sync_api.Page"]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.on("console", lambda message: console.append(message.text))
        try:
            yield pg
        finally:
            context.close()


@pytest.fixture
def page(server: str, browser_page):  # type: ignore[no-untyped-def]
    browser_page.goto(server)
    return browser_page


def csp_refusals(console: list[str]) -> list[str]:
    return [m for m in console if "Content Security Policy" in m]


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


def test_upload_launch_review_and_export_in_chromium(page, console: list[str], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
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
    count = page.get_by_test_id("drGalleryCount")  # "24 images · page 1 of 1"
    count.wait_for()
    assert count.inner_text().endswith("page 1 of 1")
    images = int(count.inner_text().split()[0])
    assert 12 <= images <= 24  # a prompt may stop after one iteration
    assert page.locator("[data-testid=drCard]").count() == images  # cards of the grid component
    shoot(page, "gallery")
    page.locator("[data-testid=drCard] img").first.click()  # clicking the image opens Review
    page.locator("[data-testid=drDesk][data-ready]").wait_for()
    settle(page)
    page.get_by_test_id("stFeedback").get_by_test_id("stFeedbackButton").nth(4).click()  # five stars
    settle(page)
    page.get_by_role("button", name="Approve", exact=True).click()
    settle(page)
    page.get_by_label("Note", exact=True).fill("hero shot")
    page.get_by_label("Note", exact=True).press("Enter")
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
    assert csp_refusals(console) == []  # the policy blocks nothing Streamlit, its charts or its images need


# ---- deep links: every URL works as the first visit after a restart (issue 11, item 8) ---------------------------
def seed(data_dir: Path, tmp_path: Path, prompt_set: Path | None = None, *extra: str) -> None:
    """A finished offline run in ``data_dir``, made by the CLI as a user would."""
    prompt_set = prompt_set or write_prompt_set(tmp_path / "set.json", make_prompts(2))
    env = subprocess_env(data_dir)
    env.pop("DARKROOM_PLUGINS")
    done = subprocess.run([PYTHON, "-m", "pipeline", "run", str(prompt_set), "--iterations", "1", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _seeded_scope(fixture_name: str, config: pytest.Config) -> str:
    return "function" if TEST_DATABASE == "postgresql" else "module"  # PostgreSQL: emptied before each test


@pytest.fixture(scope=_seeded_scope)
def seeded_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run, shared by the deep-link tests (each still starts its own server); on PostgreSQL,
    whose database is emptied before each test, one per test."""
    folder = tmp_path_factory.mktemp("deep_links")
    seed(folder / "data", folder)
    return folder / "data"


@pytest.fixture
def seeded_server(seeded_data: Path, tmp_path: Path) -> Iterator[str]:
    with streamlit_server(seeded_data, tmp_path / "streamlit.log") as url:
        yield url


IN_SELECTION = re.compile(r"1 of 2 in this selection")
DEEP_LINKS: dict[str, str | re.Pattern[str]] = {
    "": "Runs", "runs": "Runs", "new_run": "New run", "gallery": "Filters", "gallery?item=1": "Filters",
    "gallery?item=" + "9" * 30: "Filters", "review?item=1": IN_SELECTION, "review": IN_SELECTION,
    "review?item=" + "9" * 5_000: IN_SELECTION, "export": "Export", "providers": "Providers", "settings": "Settings",
}


@pytest.mark.parametrize("link", list(DEEP_LINKS), ids=lambda link: link[:20] or "root")
def test_every_deep_link_works_as_the_first_visit_after_a_restart(seeded_server: str, browser_page, console: list[str],  # type: ignore[no-untyped-def]
                                                                   link: str, tmp_path: Path) -> None:
    response = browser_page.goto(f"{seeded_server}/{link}")
    assert "img-src 'self' data: blob:" in response.headers["content-security-policy"]
    settle(browser_page)
    expected = DEEP_LINKS[link]
    main = browser_page.get_by_test_id("stMain")
    (main.get_by_text(expected) if isinstance(expected, re.Pattern) else
     browser_page.get_by_role("heading", name=expected, exact=True)).first.wait_for()
    assert browser_page.url.split("?")[0] == f"{seeded_server}/{link.split('?')[0] or 'runs'}"  # not sent elsewhere
    assert browser_page.get_by_text("Page not found").count() == 0
    nav = browser_page.get_by_test_id("stSidebarNavLink").all_inner_texts()
    assert [n.split("\n")[-1] for n in nav] == ["New run", "Runs", "Gallery", "Export", "Providers", "Projects", "Storage", "Settings"]  # the router's
    body = browser_page.inner_text("body")
    assert browser_page.get_by_test_id("stException").count() == 0
    for sign in ("KeyError", "Traceback", "has encountered an error", "session_state"):
        assert sign not in body, sign
    assert csp_refusals(console) == []
    if link == "review?item=1":
        shoot(browser_page, "deep_link_review_item")


# ---- user markdown is text; the policy refuses other hosts' images (issue 11, item 4) ------------------------------
@pytest.fixture
def outside_host() -> Iterator[ImageHostEmulator]:
    host = ImageHostEmulator().start("127.0.0.2")  # loopback, but another origin: an outside host to the browser
    try:
        yield host
    finally:
        host.stop()


def test_a_markdown_image_in_user_text_is_shown_as_text_and_never_fetched(data_dir: Path, tmp_path: Path, browser_page,  # type: ignore[no-untyped-def]
                                                                           console: list[str], outside_host: ImageHostEmulator) -> None:
    image = f"![an owl]({outside_host.url}/owl.png)"
    prompt_set = tmp_path / "hostile.json"
    prompt_set.write_text(json.dumps({"name": image, "prompts": [
        {"id": "owl", "title": image, "scene": image, "mood": image, "prompt": f"A red fox {image}"}]}))
    seed(data_dir, tmp_path, prompt_set, "--name", image)
    with streamlit_server(data_dir, tmp_path / "streamlit.log") as url:
        for path in ("review?item=1", "gallery", "runs", "export"):
            browser_page.goto(f"{url}/{path}")
            settle(browser_page)
            browser_page.get_by_text(image).first.wait_for()  # the very characters, not an image
            assert browser_page.locator(f"img[src*='{outside_host.url.split('//')[1]}']").count() == 0
            shoot(browser_page, "hostile_markdown_as_text_" + path.split("?")[0])
        # Were such text ever rendered as markup, the policy would still refuse the request:
        refused = browser_page.evaluate("""url => new Promise(done => {
            document.addEventListener("securitypolicyviolation", e => done(e.violatedDirective), {once: true});
            const img = document.createElement("img"); img.src = url; document.body.appendChild(img);
        })""", f"{outside_host.url}/injected.png")
        assert refused == "img-src"
        browser_page.wait_for_timeout(500)
    assert outside_host.requests == []  # the outside host never heard from the browser
    assert any("Content Security Policy" in m and "injected.png" in m for m in console)
