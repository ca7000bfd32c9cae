"""Start-up and the first image (issue 17): what a user notices, without timing anything.

- A Gallery left open before any run exists shows a run's first image by itself: the run is
  queued from outside the page (as another tab, the API or a script would), the dashboard's
  runner picks it up, and the page redraws with nobody touching it.
- The Gallery's "anything new?" number changes on a launch, on an image and on a run's end, and
  stays the same when nothing happened (so an idle Gallery never redraws).
- Starting the server imports no vendor SDK, nor Darkroom's own modules (they load on a thread
  while the browser loads the page); the first page's modules include no vendor SDK either.
Timings are in ``bench/startup.py``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PYTHON, ROOT, chromium, create_run, make_prompts, require_chromium, streamlit_server, subprocess_env

VENDOR_SDKS = ("openai", "google.genai", "boto3", "fastapi", "pandas")
NOT_FOR_THE_FIRST_PAGE = ("aiohttp", "sqlalchemy.dialects.postgresql")  # a run's HTTP stack; PostgreSQL on a SQLite install


def test_starting_the_server_imports_no_sdk_and_the_first_page_none_either(tmp_path: Path) -> None:
    probe = (
        "import json, sys, importlib\n"
        "import app\n"
        "server = sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline')\n"
        "for m in app.WARM_UP_MODULES: importlib.import_module(m)\n"
        "from pipeline import registry; registry.ensure_loaded()\n"
        f"print(json.dumps({{'server': server, 'sdks': [m for m in {VENDOR_SDKS!r} if m in sys.modules],\n"
        f"                  'later': [m for m in {NOT_FOR_THE_FIRST_PAGE!r} if m in sys.modules]}}))\n"
    )
    out = subprocess.run([PYTHON, "-c", probe], cwd=ROOT, env=subprocess_env(tmp_path / "data"), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["server"] == [], f"the server's import of app.py loads Darkroom's modules: {found['server']}"
    assert found["sdks"] == [], f"the first page loads vendor SDKs: {found['sdks']}"
    assert found["later"] == [], f"the first page loads what only a run or another database needs: {found['later']}"


def test_the_latest_change_moves_on_a_launch_an_image_and_an_end_only(engine, settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pipeline.review.changes import latest_change
    from pipeline.runs.runner import RunExecutor
    from pipeline.store.db import session

    with session(engine) as s:
        empty = latest_change(s)
        assert latest_change(s) == empty and not empty.running
    run_id = create_run(engine, settings, make_prompts(2), tmp_path, providers=["offline"], judge="offline", iterations=1)
    with session(engine) as s:
        queued = latest_change(s)
    assert queued != empty and queued.running and queued.last_image == empty.last_image
    import asyncio

    asyncio.run(RunExecutor(engine, settings, run_id).execute())
    with session(engine) as s:
        done = latest_change(s)
        assert latest_change(s) == done  # nothing happened since: an idle Gallery does not redraw
    assert done.last_image > queued.last_image and done.last_score > queued.last_score and not done.running


@pytest.fixture
def browser():  # type: ignore[no-untyped-def]
    require_chromium()
    pytest.importorskip("playwright.sync_api")
    with chromium() as b:
        yield b


def test_a_gallery_opened_before_a_run_shows_its_first_image_without_a_click(browser, engine, settings, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                              isolated_data_dir: Path) -> None:
    with streamlit_server(isolated_data_dir, tmp_path / "streamlit.log") as url:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{url}/gallery")
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
        page.get_by_text("Nothing to review yet").wait_for()
        assert page.locator("[data-testid=drCard]").count() == 0

        # queued from outside the page: the dashboard's runner executes it, the open Gallery notices
        create_run(engine, settings, make_prompts(3), tmp_path, providers=["offline"], judge="offline", iterations=1)

        thumb = page.locator("[data-testid=drCard] img.dr-thumb").first
        thumb.wait_for(state="visible")
        page.wait_for_function("t => t.complete && t.naturalWidth > 0", arg=thumb.element_handle())
        assert page.get_by_test_id("stException").count() == 0
        page.close()
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()
