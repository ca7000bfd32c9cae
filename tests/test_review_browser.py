"""The review desk in a real browser: keys, loupe, compare, the URL, and two reviewers at once.

`streamlit run app.py` over a data folder seeded by the offline stack, driven by Playwright in
headless Chromium (Debian's, at /usr/bin/chromium). Skipped when that browser is missing, unless
DARKROOM_REQUIRE_BROWSER=1 (as in CI) makes that a failure. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.store.db import open_database, session
from pipeline.store.models import Rating
from tests.conftest import PYTHON, ROOT, SAMPLES, chromium, require_chromium, run_cli, streamlit_server, subprocess_env

ARTIFACTS = Path(os.environ.get("DARKROOM_ARTIFACTS", ROOT / "test-artifacts"))

require_chromium()

sync_api = pytest.importorskip("playwright.sync_api")

READY = "[data-testid='stApp'][data-test-script-state='notRunning']"
COOKIE = "darkroom_reviewer"  # pages.components.COOKIE (not imported: that registers the components in this process)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """The real app over a data folder holding one finished run of the 12 sample prompts (2 iterations each)."""
    assert run_cli("run", str(SAMPLES / "seed.json"), "--iterations", "2").code == 0
    with streamlit_server(tmp_path / "data", tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture
def browser() -> Iterator["sync_api.Browser"]:
    with chromium() as b:
        yield b


def new_page(browser, url: str, name: str, width: int = 1440, height: int = 900):  # type: ignore[no-untyped-def]
    """A reviewer in a browser context of their own (their own cookies), named in the sidebar."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{url}/gallery")
    settle(page)
    box = page.get_by_label("Your name (reviewer)", exact=True)
    box.fill(name)
    box.press("Enter")
    settle(page)
    # The name reaches the cookie a moment after the run ends (the identity component writes it when
    # drawn): a page opened by URL before that is a new session without a name, whose keys rate nothing.
    page.wait_for_function("(c) => document.cookie.split('; ').some((p) => p.startsWith(c + '='))", arg=COOKIE)
    return page


def settle(page) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']")
    page.wait_for_selector(READY)


def shoot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def desk(page):  # type: ignore[no-untyped-def]
    return page.locator("[data-testid=drDesk]")


def wait_desk(page, item: str | None = None, *, not_item: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """Wait until the desk shows a prompt (``item``, or any but ``not_item``) with its full-size images decoded."""
    page.wait_for_function(
        """([want, old]) => { const d = [...document.querySelectorAll('*')].map(e => e.shadowRoot).filter(Boolean)
             .map(r => r.querySelector('[data-testid=drDesk]')).find(Boolean);
           if (!d || d.getAttribute('data-ready') !== d.getAttribute('data-item')) return false;
           const at = d.getAttribute('data-item');
           return (!want || at === want) && (!old || at !== old); }""",
        arg=[item, not_item])
    settle(page)
    return desk(page).get_attribute("data-item")


def press(page, *keys: str) -> None:  # type: ignore[no-untyped-def]
    for key in keys:
        page.keyboard.press(key)
    page.wait_for_timeout(150)
    settle(page)


def ratings(data: Path) -> dict[tuple[str, int], tuple[int | None, str, str]]:
    from pipeline.config import Settings

    with session(open_database(Settings.from_env())) as s:
        return {(r.reviewer, r.iteration_id): (r.stars, r.decision, r.note) for r in s.exec(select(Rating))}


def ratings_when(data: Path, ready, timeout: float = 20.0) -> dict[tuple[str, int], tuple[int | None, str, str]]:  # type: ignore[no-untyped-def]
    """The ratings once ``ready(ratings)`` holds (the app answers keys asynchronously), or as they are at the deadline."""
    deadline = time.monotonic() + timeout
    kept = ratings(data)
    while not ready(kept) and time.monotonic() < deadline:
        time.sleep(0.1)
        kept = ratings(data)
    return kept


def test_keyboard_review_end_to_end_with_two_reviewers(server: str, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ana = new_page(browser, server, "Ana")
    ana.goto(f"{server}/gallery?sort=prompt&dir=asc&size=s")
    settle(ana)
    first = ana.locator("[data-testid=drCard]").first
    assert first.get_attribute("title").startswith("scene_001")  # the id on hover
    shoot(ana, "review_grid")
    first.locator("img").click()  # clicking the image opens Review
    start = wait_desk(ana)
    assert "1 of 12 in this selection" in ana.get_by_test_id("stMain").inner_text()
    assert re.search(r"item=\d+", ana.url) and "sort=prompt" in ana.url

    # star + decision + next, three keys per prompt, typed without waiting for the app
    ids = []
    for stars in (5, 4, 3):
        ids.append(int(desk(ana).locator("[data-testid=drIteration]").first.get_attribute("data-id") or 0))
        before = desk(ana).get_attribute("data-item")
        press(ana, str(stars), "p", "ArrowRight")
        wait_desk(ana, not_item=before)
    assert "4 of 12 in this selection" in ana.get_by_test_id("stMain").inner_text()
    shoot(ana, "review_desk")

    # Tab focuses the next iteration; X rejects it; Z undoes that; keys never fire while typing
    press(ana, "Tab")
    assert desk(ana).locator("[data-testid=drIteration][aria-current=true]").get_attribute("data-number") == "2"
    assert "it=2" in ana.url
    press(ana, "x", "z")

    # C opens compare (never Streamlit's "Clear caches"), F the loupe, ? the key list
    press(ana, "c")
    ana.get_by_test_id("drCompare").wait_for()
    assert ana.get_by_test_id("stDialog").count() == 0
    assert "mode=compare" in ana.url and "cmp=" in ana.url
    shoot(ana, "review_compare")
    press(ana, "Escape")
    ana.get_by_test_id("drCompare").wait_for(state="detached")
    press(ana, "f")
    ana.get_by_test_id("drLoupe").wait_for()
    press(ana, "+")
    shoot(ana, "review_loupe")
    press(ana, "f", "?")
    ana.get_by_test_id("drHelp").wait_for()
    assert "undo your last action" in ana.get_by_test_id("drHelp").inner_text()
    press(ana, "Escape")
    press(ana, "n")
    ana.keyboard.type("keep p x")  # P and X typed into the note are text, not decisions
    ana.keyboard.press("Enter")
    settle(ana)
    ana.keyboard.press("Escape")

    # reload and a second tab keep the view and the name (a cookie)
    here = ana.url
    ana.reload()
    wait_desk(ana)
    assert ana.url == here and ana.get_by_label("Your name (reviewer)", exact=True).input_value() == "Ana"
    tab = ana.context.new_page()
    tab.goto(here)
    wait_desk(tab)
    assert tab.get_by_label("Your name (reviewer)", exact=True).input_value() == "Ana"
    tab.close()

    # G goes back to the same grid (filters, sort, size)
    press(ana, "g")
    ana.get_by_test_id("drGrid").wait_for()
    assert "sort=prompt" in ana.url and "item=" not in ana.url and "mode=" not in ana.url

    # a second reviewer, in another browser, rates the same images at the same time
    bo = new_page(browser, server, "Bo")
    bo.goto(f"{server}/review?sort=prompt&dir=asc&item={start}&mode=review")
    wait_desk(bo, start)
    for _ in range(3):
        before = desk(bo).get_attribute("data-item")
        press(bo, "2", "x", "ArrowRight")
        wait_desk(bo, not_item=before)
    bo.goto(f"{server}/review?sort=prompt&dir=asc&item={start}&mode=review")
    wait_desk(bo, start)
    caption = desk(bo).locator("[data-testid=drIteration]").first.inner_text()
    assert "Ana 5★ approved" in caption and "⌀ 3.5 · 2" in caption  # the other reviewer, by name; mean and count
    shoot(bo, "review_two_reviewers")

    kept = ratings_when(tmp_path / "data", lambda k: any(note == "keep p x" for (who, _), (_, _, note) in k.items() if who == "Ana"))
    for iteration_id, stars in zip(ids, (5, 4, 3), strict=True):
        assert kept[("Ana", iteration_id)][:2] == (stars, "approved")
        assert kept[("Bo", iteration_id)][:2] == (2, "rejected")
    assert any(note == "keep p x" and decision == "none" for (who, _), (_, decision, note) in kept.items() if who == "Ana")


def test_grid_select_with_clicks_and_keys_then_rate_the_selection(server: str, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page = new_page(browser, server, "Cy", 1280, 720)
    page.goto(f"{server}/gallery?sort=prompt&dir=asc&size=s")
    settle(page)
    cards = page.locator("[data-testid=drCard]")
    cards.nth(0).locator(".dr-card-title").click()
    cards.nth(3).locator(".dr-card-title").click(modifiers=["Shift"])
    assert page.locator("[data-testid=drCard][aria-selected=true]").count() == 4
    settle(page)
    press(page, "p")
    press(page, "Shift+ArrowRight", "4")
    settle(page)

    def cy(kept, decision: str = "approved", stars: int = 4) -> tuple[list[int], list[int]]:  # type: ignore[no-untyped-def]
        return (sorted(i for (who, i), (_, d, _) in kept.items() if who == "Cy" and d == decision),
                sorted(i for (who, i), (st, _, _) in kept.items() if who == "Cy" and st == stars))

    kept = ratings_when(tmp_path / "data", lambda k: len(cy(k)[0]) == 4 and len(cy(k)[1]) == 5)
    decided, starred = cy(kept)
    assert len(decided) == 4 and len(starred) == 5  # the selection grew by one card with Shift+→
    shoot(page, "review_grid_selection")
    press(page, "z")  # one undo: the whole batch of stars
    kept = ratings_when(tmp_path / "data", lambda k: not any(st for (who, _), (st, _, _) in k.items() if who == "Cy"))
    assert not any(stars for (who, _), (stars, _, _) in kept.items() if who == "Cy")
    assert page.get_by_test_id("stDialog").count() == 0


def test_above_the_fold_controls_and_cards(server: str, browser) -> None:  # type: ignore[no-untyped-def]
    for width, height in ((1440, 900), (1280, 720)):
        page = new_page(browser, server, "Di", width, height)
        page.goto(f"{server}/review?sort=prompt&dir=asc&item=1&mode=review")
        wait_desk(page)
        for name in ("Approve", "Reject"):
            box = page.get_by_role("button", name=name, exact=True).bounding_box()
            assert box and box["y"] + box["height"] <= height, f"{name} below the fold at {width}x{height}"
        for locator in (page.get_by_test_id("stFeedback"), page.get_by_placeholder("Note (N), Enter saves")):
            box = locator.first.bounding_box()
            assert box and box["y"] + box["height"] <= height
        frames = desk(page).locator(".dr-frame")
        bottom = max(frames.nth(i).bounding_box()["y"] + frames.nth(i).bounding_box()["height"] for i in range(frames.count()))
        assert bottom <= height, "the images fit in the window"
        shoot(page, f"review_{width}x{height}")
        page.context.close()
    grid = new_page(browser, server, "Di")
    fold = grid.evaluate("""() => {
        const cards = [...document.querySelectorAll('*')].map(e => e.shadowRoot).filter(Boolean)
            .flatMap(r => [...r.querySelectorAll('[data-testid=drCard]')]).map(c => c.getBoundingClientRect());
        const tops = [...new Set(cards.map(r => Math.round(r.top)))].sort((a, b) => a - b);
        const cols = cards.filter(r => Math.round(r.top) === tops[0]).length;
        const pitch = tops.length > 1 ? tops[1] - tops[0] : cards[0].height;
        const rows = Math.floor((window.innerHeight - tops[0] - cards[0].height) / pitch) + 1;
        return {cards: cards.length, visible: cards.filter(r => r.bottom <= window.innerHeight).length, room: cols * rows};
    }""")
    assert fold["visible"] == fold["cards"]  # every seeded image (23 or 24) is above the fold at 1440x900 ...
    assert fold["room"] >= 24, fold  # ... and the default card size leaves room for at least 24


def test_the_gallery_follows_new_work_without_reloading_its_thumbnails_or_losing_a_typed_name(  # type: ignore[no-untyped-def]
        server: str, browser, tmp_path: Path) -> None:
    """A Gallery redraws by itself when new images land: the thumbnails already shown stay as they
    are (not fetched and decoded again, no blank flash), and a name being typed meanwhile is kept."""
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{server}/gallery")
    settle(page)
    count = page.get_by_test_id("drGalleryCount")
    before = count.inner_text()
    box = page.get_by_label("Your name (reviewer)", exact=True)
    thumbs = page.locator("[data-testid=drCard] img.dr-thumb")
    shown = thumbs.count()
    assert shown > 0
    for i in range(shown):
        thumbs.nth(i).evaluate("(i) => { i.dataset.probe = 'shown before'; }")
    box.fill("Ema")  # typed, not yet entered
    cli = subprocess.run([PYTHON, "-m", "pipeline", "run", str(SAMPLES / "seed.json"), "--iterations", "1"],  # new work, from the CLI
                         env=subprocess_env(tmp_path / "data"), capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    page.wait_for_function("([el, old]) => el.innerText !== old", arg=[count.element_handle(), before])  # the page followed it
    settle(page)
    assert box.input_value() == "Ema"
    assert page.locator("[data-testid=drCard] img.dr-thumb[data-probe='shown before']").count() == shown  # the same elements
    assert thumbs.count() > shown  # beside the new run's
    box.press("Enter")
    page.wait_for_function("(c) => document.cookie.split('; ').includes(c + '=Ema')", arg=COOKIE)
    page.context.close()
