"""Dashboard hardening (issue 11, items 4, 8, 15, 16, 18): user text is shown as text on every page,
hostile links are a message, the Export page never offers a stale zip, and the server sends a
Content Security Policy with no outside images and no framing by other sites.

Pages run through Streamlit's AppTest over a real database; the headers are read from a real
``streamlit run app.py`` (the deep links as a first visit, in Chromium, are in test_browser.py).
"""

from __future__ import annotations

import json
import tomllib
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline.review.ratings import rate
from pipeline.store.db import open_database, session
from pipeline.store.models import MAX_ROW_ID, Evaluation, Iteration, Refinement, Run, RunItem
from tests.conftest import ROOT, make_prompts, run_cli, streamlit_server, write_prompt_set

EVIL = "evil.example"
HTML_IMAGE = f'<img src="http://{EVIL}/html.png">'


def md_image(tag: str) -> str:
    """A markdown image to an outside host: rendered as markdown, every reviewer's browser would fetch it."""
    return f"![owl {tag}](http://{EVIL}/{tag}.png)"


# Elements that show their text as typed (no markdown): where hostile text may appear, and must.
# Darkroom's own components (pages/components) put text in the page with textContent only.
TEXT_ELEMENTS = {"text", "code", "html", "dataframe", "selectbox", "multiselect", "text_input", "plotly_chart", "bidi_component"}
AppFactory = Callable[..., AppTest]


@pytest.fixture
def app() -> Iterator[AppFactory]:
    """A fresh AppTest per call; process-wide singletons (engine, runner thread) are released after the test."""
    st.cache_resource.clear()

    def make(page: str | None = None, reviewer: str = "", item: str | None = None) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        if reviewer:
            at.session_state["reviewer"] = reviewer
        at.run()
        if page:
            at.switch_page(f"pages/{page}.py").run()
        if item is not None:  # a link with ?item= (switching pages drops query parameters)
            at.query_params["item"] = item
            at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield make
    st.cache_resource.clear()  # on_release stops the background runner


def db():  # type: ignore[no-untyped-def]
    from pipeline.config import Settings

    return open_database(Settings.from_env())


def hostile_set(tmp_path: Path) -> dict:
    return {"name": md_image("set"), "prompts": [
        {"id": "owl", "title": md_image("title") + HTML_IMAGE, "scene": md_image("scene"), "mood": md_image("mood"),
         "prompt": "A red fox " + md_image("prompt")},
        {"id": "fox", "prompt": "A teal lantern on a hill"},
    ]}


@pytest.fixture
def hostile(tmp_path: Path) -> int:
    """One finished run whose every user- or service-supplied text is a markdown image; returns the owl's run item id."""
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(hostile_set(tmp_path)), encoding="utf-8")
    assert run_cli("run", path, "--iterations", "2", "--name", md_image("run")).code == 0
    with session(db()) as s:
        run = s.exec(select(Run)).one()
        run.error = "service said: " + md_image("runerror")
        item = s.exec(select(RunItem).order_by(RunItem.id)).first()
        item.error_kind, item.error_message = "provider", md_image("itemerror")
        its = s.exec(select(Iteration).where(Iteration.run_item_id == item.id).order_by(Iteration.number)).all()
        for it in its:
            it.model = md_image("model")
            s.add(it)
        for ev in s.exec(select(Evaluation).where(Evaluation.iteration_id.in_([it.id for it in its]))).all():
            ev.criteria = {md_image("criterion"): 5.0}
            ev.checks = [{"answer": "yes", "question": md_image("question"), "evidence": md_image("evidence")}]
            ev.issues = [{"kind": md_image("kind"), "description": md_image("description"), "suggestion": md_image("suggestion")}]
            s.add(ev)
        for ref in s.exec(select(Refinement).where(Refinement.run_item_id == item.id)).all():
            ref.rationale = md_image("rationale")
            s.add(ref)
        s.add_all([run, item])
        s.commit()
        rate(s, its[0].id, "ana", note=md_image("note"))
        rate(s, its[0].id, "![o](http://evil.example/r)", stars=2, decision="rejected", note=md_image("other"))
        s.commit()
        return item.id


def markdown_offenders(at: AppTest) -> list[str]:
    """Every element outside :data:`TEXT_ELEMENTS` that carries the outside host: user text through markdown."""
    found = []
    for node in at._tree:
        proto = getattr(node, "proto", None)
        if proto is None:
            continue
        body = str(proto)
        if EVIL in body and node.type not in TEXT_ELEMENTS:
            found.append(f"{node.type}: {body[:200]}")
        if node.type == "html" and "<img" in body:
            found.append(f"unescaped html: {body[:200]}")
    return found


def shown_as_text(at: AppTest) -> str:
    return "\n".join(t.value for t in at.text) + "\n".join(c.value for c in at.code)


def in_text_elements(at: AppTest) -> str:
    """Everything the text-only elements carry (their protos), to check hostile text did reach the page."""
    return "\n".join(str(node.proto) for node in at._tree if getattr(node, "proto", None) is not None and node.type in TEXT_ELEMENTS)


# ---- item 4: user text is text, on every page ------------------------------------------------------------------
@pytest.mark.parametrize("page", ["runs", "gallery", "review", "export", "providers", "settings"])
def test_no_page_renders_user_or_service_text_as_markdown(app: AppFactory, hostile: int, page: str) -> None:
    at = app(page, reviewer="ana")
    assert markdown_offenders(at) == []


def test_the_prompt_in_detail_carries_every_hostile_text_as_text(app: AppFactory, hostile: int) -> None:
    at = app("review", reviewer="ana", item=str(hostile))
    assert markdown_offenders(at) == []
    shown = in_text_elements(at)
    for tag in ("prompt", "itemerror", "model", "question", "evidence", "description", "other"):
        assert md_image(tag) in shown, tag


def test_runs_page_shows_the_run_name_and_its_error_as_text(app: AppFactory, hostile: int) -> None:
    at = app("runs")
    assert markdown_offenders(at) == []
    assert f"Run 1 · {md_image('run')}" in shown_as_text(at)
    assert "service said: " + md_image("runerror") in shown_as_text(at)


def test_new_run_preview_and_problems_show_names_as_text(app: AppFactory, tmp_path: Path) -> None:
    at = app("new_run")
    raw = json.dumps(hostile_set(tmp_path)).encode()
    at.file_uploader[0].set_value((md_image("file") + ".json", raw, "application/json")).run()
    assert not at.exception and markdown_offenders(at) == []
    assert f"Prompt set: {md_image('set')}" in shown_as_text(at)
    bad = json.dumps({"name": md_image("set"), "prompts": [{"id": "a", "prompt": "x", "seed": "1"}]}).encode()
    at.file_uploader[0].set_value((md_image("badfile") + ".json", bad, "application/json")).run()
    assert not at.exception and markdown_offenders(at) == []
    assert "nothing was saved" in at.error[0].value and f"File: {md_image('badfile')}.json" in shown_as_text(at)


def test_settings_shows_paths_as_text(app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(tmp_path / md_image("datadir").replace("/", "|")))
    at = app("settings")
    assert markdown_offenders(at) == []
    assert "![owl datadir](http:||evil.example|datadir.png)" in shown_as_text(at)


# ---- items 7 and 16: hostile input is a message, never a traceback -----------------------------------------------
def test_a_lone_surrogate_in_an_upload_is_listed_with_its_path_and_the_preview_does_not_crash(app: AppFactory) -> None:
    at = app("new_run")
    raw = rb'{"prompts": [{"id": "a", "prompt": "a fox \ud800 in snow"}, {"id": "b\udfff", "prompt": "x"}]}'
    at.file_uploader[0].set_value(("surrogate.json", raw, "application/json")).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["where (JSON path)"].tolist() == ["prompts[0].prompt", "prompts[1].id"]
    assert "lone surrogate (\\ud800)" in table["problem"][0]
    assert not [b for b in at.button if b.label == "Launch run"]


@pytest.mark.parametrize("page", ["gallery", "review"])
@pytest.mark.parametrize("item", ["9" * 5_000, "99999999999999999999999", "-1", "²", "1e9", "0", "abc"])
def test_a_link_with_an_impossible_item_still_opens_the_page(app: AppFactory, hostile: int, page: str, item: str) -> None:
    """No ValueError (digit limit) or OverflowError (SQLite INTEGER): the number is not a prompt, so none is opened."""
    at = app(page, reviewer="ana", item=item)
    assert not at.exception
    assert markdown_offenders(at) == []


def test_a_link_to_a_prompt_that_is_gone_names_it(app: AppFactory) -> None:
    at = app("review", item=str(MAX_ROW_ID))  # the largest id a row can have (PostgreSQL's integer): looked up, not found
    assert not at.exception
    assert at.error[0].value == "This link does not open a prompt."
    assert f"no prompt {MAX_ROW_ID} in any run" in shown_as_text(at)


# ---- item 15: the zip offered is the zip of the choice on screen ----------------------------------------------------
def test_export_never_offers_the_zip_of_a_previous_choice(app: AppFactory, tmp_path: Path) -> None:
    assert run_cli("run", write_prompt_set(tmp_path / "a.json", make_prompts(3)), "--iterations", "1").code == 0
    with session(db()) as s:
        first = s.exec(select(Iteration).order_by(Iteration.id)).first()
        rate(s, first.id, "ana", decision="approved")
        s.commit()
    at = app("export")
    assert at.radio(key="export_selection").value == "approved"
    next(b for b in at.button if b.label == "Build zip").click().run()
    [download] = at.get("download_button")
    assert "_approved_" in download.key and "1 image(s)" in at.success[0].value
    assert "approved images" in shown_as_text(at)

    at.radio(key="export_selection").set_value("all").run()  # the choice changes: the approved zip is withdrawn
    assert not at.exception
    assert at.get("download_button") == [] and not at.success
    assert "have changed since the last zip was built" in at.info[0].value

    next(b for b in at.button if b.label == "Build zip").click().run()
    [download] = at.get("download_button")
    assert "_all_" in download.key and "3 image(s)" in at.success[0].value
    assert "every generated image" in shown_as_text(at)

    at.multiselect(key="export_runs").set_value([]).run()  # no run chosen: nothing on offer
    assert at.get("download_button") == []
    at.multiselect(key="export_runs").set_value([1]).run()  # back to the choice built: offered again, the same zip
    [again] = at.get("download_button")
    assert again.key == download.key


def test_a_built_zip_is_offered_only_for_its_own_choice_and_while_it_exists(tmp_path: Path) -> None:
    from pipeline.review.export import BuiltZip, ExportChoice

    path = tmp_path / "z.zip"
    path.write_bytes(b"PK")
    built = BuiltZip(ExportChoice.of([2, 1, 2], "approved"), path, 1, 2)
    assert built.offered_for(ExportChoice.of([1, 2], "approved"))
    assert not built.offered_for(ExportChoice.of([1, 2], "all"))
    assert not built.offered_for(ExportChoice.of([1], "approved"))
    path.unlink()
    assert not built.offered_for(ExportChoice.of([1, 2], "approved"))
    assert ExportChoice.of([2, 1], "best").describe({1: "Night", 2: "Day"}) == (
        "run 1 (Night), run 2 (Day): each prompt's best-scoring iteration")


# ---- items 8 and 18: the server ------------------------------------------------------------------------------------
def test_visitors_get_no_exception_details() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"


def test_streamlit_run_app_py_serves_the_st_app_with_its_router_fix() -> None:
    """`streamlit run app.py` must find the st.App (headers, startup routing); Streamlit's flag must still exist."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web.server.app_discovery import discover_asgi_app

    found = discover_asgi_app(ROOT / "app.py")
    assert (found.is_asgi_app, found.import_string) == (True, "app:app")
    assert hasattr(PagesManager, "uses_pages_directory")


def test_every_response_forbids_outside_images_and_framing(tmp_path: Path) -> None:
    with streamlit_server(tmp_path / "data", tmp_path / "streamlit.log") as url:
        for path in ("/", "/gallery?item=1", "/settings", "/_stcore/health", "/favicon.png", "/no/such/page"):
            with urllib.request.urlopen(url + path, timeout=10) as response:
                headers = response.headers
            csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
            assert csp["img-src"] == "'self' data: blob:", path
            assert csp["default-src"] == "'self'" and csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'self'"
            assert "http" not in headers["Content-Security-Policy"] and "*" not in headers["Content-Security-Policy"]
            assert headers["X-Frame-Options"] == "SAMEORIGIN" and headers["X-Content-Type-Options"] == "nosniff", path
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()

