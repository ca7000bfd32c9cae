"""Bundles end to end in a real browser: `streamlit run app.py`, driven by Playwright in headless Chromium.

The 5-character, 12-page story bundle (data/samples/story_bundle.zip) is uploaded on New run and
launched on the offline stack with one iteration; a page's Review shows its lineage (edited from
its reference images) and the judge's "same character as in the reference image?" checks. The
avatar bundle (base image → 2×2 grid edits → split, 8 images per persona) is launched in grid mode;
a cell's Review shows "cell k of 4 of the grid image …", and the Export page's zip lists every
cell with its operation, parent and cell index in manifest.json, as the database has them.
Needs Debian's chromium (skipped without it, unless DARKROOM_REQUIRE_BROWSER=1).
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from pipeline.config import Settings
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, Prompt, Run, RunItem
from tests.conftest import SAMPLES, chromium, require_chromium, streamlit_server

require_chromium()

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def server(isolated_data_dir: Path, tmp_path: Path) -> Iterator[str]:
    """The app on the test's own data folder (the test reads the same database afterwards)."""
    with streamlit_server(isolated_data_dir, tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def page(server: str) -> Iterator[Any]:
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1500, "height": 1000}, accept_downloads=True)
        pg = context.new_page()
        pg.set_default_timeout(30_000)
        pg.goto(server)
        try:
            yield pg
        finally:
            context.close()


def settle(page: Any) -> None:
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']")
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")


def go(page: Any, title: str) -> None:
    page.get_by_test_id("stSidebarNavLink").filter(has_text=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()
    settle(page)


def launch(page: Any, bundle: Path, prompts: int, *, grid: bool = False) -> None:
    """Upload ``bundle`` on New run, one iteration per prompt (grid mode if asked), launch, wait until done."""
    go(page, "New run")
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(bundle))
    page.get_by_text(f"{prompts} prompt(s)", exact=True).wait_for()
    settle(page)
    slider = page.get_by_test_id("stSlider").filter(has_text="Iterations per prompt").get_by_role("slider")
    slider.focus()
    slider.press("Home")  # the least: one iteration
    settle(page)
    assert slider.input_value() == "1"
    if grid:
        page.get_by_text("Grid mode: ask for 2×2 grids", exact=False).click()
        settle(page)
    page.get_by_role("button", name="Launch run").click()
    page.get_by_role("heading", name="Runs", exact=True).wait_for()
    page.get_by_text(f"{prompts} completed of {prompts}").first.wait_for(timeout=180_000)
    settle(page)


def last_run_images(settings: Settings) -> tuple[Run, list[tuple[Iteration, Prompt]]]:
    """The newest run and its images (each with its prompt), read from the app's database."""
    engine = open_database(settings)
    try:
        with session(engine) as s:
            run = s.exec(select(Run).order_by(col(Run.id).desc())).first()
            assert run is not None
            return run, list(s.exec(select(Iteration, Prompt).where(Iteration.run_item_id == RunItem.id, RunItem.run_id == run.id,
                                                                    RunItem.prompt_id == Prompt.id).order_by(col(Iteration.id))).all())
    finally:
        engine.dispose()



def test_story_and_avatar_bundles_show_their_lineage_in_review_and_the_export_manifest(page: Any, server: str, tmp_path: Path) -> None:
    settle(page)
    page.get_by_label("Your name (reviewer)", exact=True).fill("Ana")
    page.get_by_label("Your name (reviewer)", exact=True).press("Enter")
    settle(page)

    # ---- the story bundle: 12 pages, 5 characters, one iteration each -----------------------------------------
    launch(page, SAMPLES / "story_bundle.zip", 12)
    go(page, "Gallery")
    page.locator("[data-testid=drCard] img").first.click()  # clicking the image opens Review
    page.locator("[data-testid=drDesk][data-ready]").wait_for()
    settle(page)
    main = page.get_by_test_id("stMain")
    main.get_by_text(re.compile(r"^Image \d+: edited from the prompt's reference images$")).wait_for()
    page.locator("[data-testid=drDesk]").click(position={"x": 5, "y": 5})
    page.keyboard.press("i")  # the details drawer: the judge's checks
    details = page.locator("[data-testid=drDetails]")
    details.wait_for()
    text = details.inner_text()
    asked = re.findall(r"Is this the same character \(([^)]+)\) as in the reference image\?", text)
    assert asked and set(asked) <= {"Mira", "Tobi", "Oma Lene", "Kit", "Pip"}, text
    assert "likeness" in text  # the offline judge compared the image with the character's reference

    settings = Settings.from_env()
    _, story = last_run_images(settings)
    assert len(story) == 12 and all(it.operation == "edit" and it.parent_ids == [] for it, _ in story)
    assert all(len(it.parameters.get("references", [])) >= 2 for it, _ in story)  # the style image and the cast's faces

    # ---- the avatar bundle in grid mode: base → two 2×2 grids of edits → 8 cells per persona -----------------
    launch(page, SAMPLES / "avatar_bundle.zip", 4, grid=True)
    run, avatar = last_run_images(settings)
    avatar_run = run.id
    cells = [(it, prompt) for it, prompt in avatar if it.operation == "grid-cell"]
    grids = {it.id: it for it, _ in avatar if it.operation == "edit"}
    assert len(grids) == 8 and len(cells) == 32  # 4 personas × (2 grids, 8 cells)
    assert all(len(it.parent_ids) == 1 and it.parent_ids[0] in grids and it.cell_index in (1, 2, 3, 4) for it, _ in cells)
    for it, prompt in cells:  # each cell's sidecar says the same
        sidecar = json.loads((settings.data_dir / run.output_dir / "results" / prompt.key / f"iteration_{it.number}_results.json").read_text())
        assert (sidecar["operation"], sidecar["parent_ids"], sidecar["cell_index"]) == ("grid-cell", it.parent_ids, it.cell_index)
    cell = cells[5][0]
    page.goto(f"{server}/review?item={cell.run_item_id}&it={cell.number}")
    settle(page)
    page.locator("[data-testid=drDesk][data-ready]").wait_for()
    page.get_by_test_id("stMain").get_by_text(f"Image {cell.id}: cell {cell.cell_index} of 4 of the grid image {cell.parent_ids[0]}",
                                              exact=False).wait_for()

    go(page, "Export")
    page.get_by_test_id("stMultiSelect").filter(has_text="Runs").wait_for()
    page.get_by_text("every generated image").click()
    settle(page)
    runs = page.get_by_test_id("stMultiSelect").filter(has_text="Runs")
    assert f"Run {avatar_run}" in runs.inner_text()  # the newest run is chosen by default
    page.get_by_role("button", name="Build zip").click()
    page.get_by_text(re.compile(r"^\d+ image\(s\)")).wait_for()
    settle(page)
    with page.expect_download() as download:
        page.get_by_test_id("stDownloadButton").get_by_role("button").click()
    saved = tmp_path / "avatars.zip"
    download.value.save_as(saved)
    with zipfile.ZipFile(saved) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["runs"] == [avatar_run] and manifest["selection"] == "all"
    by_id = {row["image_id"]: row for row in manifest["images"]}
    for it, _ in cells:
        row = by_id[it.id]
        assert (row["operation"], row["parent_ids"], row["cell_index"]) == ("grid-cell", it.parent_ids, it.cell_index)
    assert {by_id[g]["operation"] for g in grids if g in by_id} <= {"edit"}
