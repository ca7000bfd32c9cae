"""Prompt tools: windows per provider, `check`, compression that keeps every element, enhancement.

Long prompts are real: PartiPrompts scenes concatenated (tests/long_prompts.py), at the
2,512 and 9,999/10,000/10,001-character edges and with mixed scripts. Chat compression runs
against the loopback Ollama/Gemini/OpenAI emulators, faults included.
"""

from __future__ import annotations

import asyncio
import io
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline import cli
from pipeline.config import Settings
from pipeline.display import routing_note
from pipeline.prompts.compression import compress_offline
from pipeline.prompts.critical import Anchor, offline_anchors, present
from pipeline.prompts.enhancement import enhance_offline
from pipeline.prompts.windows import Window, count_tokens
from pipeline.review.gallery import prompt_detail
from pipeline.review.items import run_items
from pipeline.services.prompt_tools import PromptTools, chat_services, windows_for
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, ProviderCall, Refinement, RunItem
from tests.conftest import write_prompt_set
from tests.emulators import fal, gemini, leonardo, ollama, openai, running
from tests.emulators.answers import STUBBORN_WORD
from tests.long_prompts import MIXED_SCRIPTS, long_prompt

FAL = Window("fal", "fal-ai/flux/schnell", max_chars=10000, chars=2000, tokens=256, tokenizer="t5")
SD = Window("comfyui", "sd15", max_chars=10000, chars=10000, tokens=77, tokenizer="clip")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def assert_every_element_kept(anchors: list[Anchor], text: str) -> None:
    for anchor in anchors:  # one by one, so a failure names the element
        assert present(anchor, text), f"element {anchor.category} {anchor.label!r} was dropped"


def fits(window: Window) -> Callable[[str], bool]:
    return lambda t: not window.fit(t).over_window


# ---- windows ----------------------------------------------------------------------------------------------
def test_length_is_counted_in_characters_never_bytes() -> None:
    text = "東京の夜" * 250 + " 🦊" * 100 + " Cre\u0300me"
    fit = FAL.fit(text)
    assert fit.chars == len(text) == 1207
    assert len(text.encode("utf-8")) > 3000  # bytes would have said "over the window"
    assert fit.chars < FAL.chars


def test_token_estimates_follow_each_tokenizer() -> None:
    assert count_tokens("a red fox", "clip") == 6  # CLIP makes 5 (3 words + start, end); the estimate's margin adds one
    assert count_tokens("a red fox", "t5") == 4  # three pieces + </s>
    assert count_tokens("x" * 400, "estimate") == 100
    assert count_tokens("a red fox", "") == 0
    words = " ".join(["fox"] * 80)  # 80 one-token words: over SD's 77 although only 319 characters
    assert SD.fit(words).over_window and not SD.fit(words).over_max
    assert not SD.fit(" ".join(["fox"] * 60)).over_window


def test_windows_come_from_the_capability_table_per_model(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = {w.provider: w for w in windows_for(settings, ["fal", "comfyui", "leonardo", "offline"])}
    assert (by_name["fal"].tokens, by_name["fal"].tokenizer) == (256, "t5")  # the shipped model is FLUX schnell
    assert (by_name["comfyui"].tokens, by_name["comfyui"].tokenizer) == (77, "clip")
    assert by_name["leonardo"].max_chars == 1500
    monkeypatch.setenv("FAL_MODEL", "fal-ai/flux/dev")  # another model: the table's general value (512)
    if registry_model_env("fal") == "FAL_MODEL":
        assert windows_for(settings, ["fal"])[0].tokens == 512


def registry_model_env(name: str) -> str | None:
    from pipeline import registry

    return registry.providers.get_class(name).model_env_var


# ---- check (CLI) and validation ---------------------------------------------------------------------------
def test_check_rejects_a_prompt_over_a_providers_hard_maximum_with_its_path(tmp_path: Path, isolated_data_dir: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    prompts = [{"id": "edge_2512", "prompt": long_prompt(2512)}, {"id": "short", "prompt": "A red fox on a bench."}]
    path = write_prompt_set(tmp_path / "set.json", prompts)
    code, out, _ = run_cli("check", str(path), "--providers", "fal,leonardo")
    assert code == 2
    assert "error: prompts[0].prompt: 2,512 characters, over leonardo's limit of 1,500" in out
    assert "prompts[1].prompt" not in [line.split(":")[1].strip() for line in out.splitlines() if line.strip().startswith("error")]
    monkeypatch.setenv("FAL_KEY", fal.KEY)  # check needs no key; a run does
    monkeypatch.setenv("LEONARDO_API_KEY", leonardo.KEY)
    code, _, err = run_cli("run", str(path), "--providers", "fal,leonardo")
    assert code == 2 and "prompts[0].prompt: 2,512 characters, over leonardo's limit of 1,500" in err
    assert not (isolated_data_dir / "darkroom.db").exists()  # refused before anything was written


@pytest.mark.parametrize("length", [9999, 10000])
def test_check_marks_prompts_at_the_10000_edge_for_compression(tmp_path: Path, length: int) -> None:
    text = long_prompt(length, 40, mixed=True)
    path = write_prompt_set(tmp_path / "set.json", [{"id": "edge", "prompt": text}])
    code, out, _ = run_cli("check", str(path), "--providers", "offline,fal", "--json")
    assert code == 0
    report = json.loads(out)["prompts"][0]
    assert report["chars"] == length
    assert report["compress_for"] == ["fal"]  # over FLUX's window, within its hard maximum
    assert {w["provider"]: w["over_window"] for w in report["windows"]} == {"offline": False, "fal": True}


def test_check_refuses_10001_characters_with_the_path(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", [{"id": "edge", "prompt": long_prompt(10001, 3)}])
    code, _, err = run_cli("check", str(path), "--providers", "fal")
    assert code == 2 and "prompts[0].prompt: 10,001 characters, over the limit of 10,000" in err


def test_check_flags_what_is_likely_to_go_wrong_with_one_line_fixes(tmp_path: Path) -> None:
    prompt = ('A photorealistic oil painting of seven cats and a dog, no people, next to a sign that says "OPEN", '
              "in black and white with vivid colours.")
    path = write_prompt_set(tmp_path / "set.json", [{"id": "busy", "prompt": prompt}])
    code, out, _ = run_cli("check", str(path), "--providers", "offline", "--json")
    assert code == 0  # warnings only
    report = json.loads(out)
    flags = {f["kind"]: f for f in report["prompts"][0]["flags"]}
    assert set(flags) == {"negative", "style_conflict", "count", "text"}
    assert all(f["level"] == "warning" and f["fix"] and f["path"] == "prompts[0].prompt" for f in flags.values())
    assert "seven cats" in flags["count"]["message"]
    p = report["prompts"][0]
    assert p["complexity"]["counts"] == ["seven cats"] and p["complexity"]["relations"] >= 1
    assert isinstance(p["readability"], float) and "cats" in p["keywords"]
    assert {"text \"OPEN\"", "seven cats", "dog"} <= {e["label"] for e in p["critical_elements"]}
    code, text_out, _ = run_cli("check", str(path), "--providers", "offline")
    assert code == 0 and "warning: prompts[0].prompt: counts above 4" in text_out and "Fix:" in text_out


def test_a_clean_prompt_passes_check(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", [{"id": "ok", "prompt": "A red fox resting on a mossy log at dawn."}])
    code, out, _ = run_cli("check", str(path), "--providers", "offline,fal,comfyui")
    assert code == 0 and "0 error(s), 0 warning(s)" in out


# ---- offline compression ------------------------------------------------------------------------------------
@pytest.mark.parametrize("length,start,mixed", [(2512, 0, False), (5000, 17, True), (9999, 60, True), (10000, 90, False)])
@pytest.mark.parametrize("window", [FAL, SD], ids=["flux", "sd"])
def test_offline_compression_keeps_every_element(length: int, start: int, mixed: bool, window: Window) -> None:
    text = long_prompt(length, start, mixed=mixed)
    anchors = offline_anchors(text)
    assert len(anchors) > 20
    result = compress_offline(text, anchors, fits(window))
    assert_every_element_kept(anchors, result.text)
    assert result.missing == () and result.kept == len(anchors)
    assert result.ratio < 0.6
    assert window.fit(result.text).over_window is not result.window_hit  # the report tells the truth
    if mixed:  # other scripts come out exactly as they went in, combining marks included
        for scene in MIXED_SCRIPTS:
            if scene[:20] in text:
                for run in [a.terms[0] for a in offline_anchors(scene) if a.category in ("script", "text_rendering")]:
                    assert run in result.text
        assert not any(unicodedata.combining(word[0]) for word in result.text.split())  # no mark torn from its letter


def test_offline_compression_hits_a_window_the_elements_fit() -> None:
    text = " ".join([long_prompt(800, 7)] * 4)  # a scene list pasted four times over
    anchors = offline_anchors(text)
    result = compress_offline(text, anchors, fits(FAL))
    assert result.window_hit and not FAL.fit(result.text).over_window
    assert_every_element_kept(anchors, result.text)
    assert len(result.text) <= 900


# ---- chat compression against the emulators -----------------------------------------------------------------
def _long_mixed() -> tuple[str, list[Anchor]]:
    text = long_prompt(3000, 11, mixed=True)
    return text, offline_anchors(text)


def test_a_compression_that_drops_elements_is_retried_naming_them(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    text, anchors = _long_mixed()
    with running(ollama.OllamaEmulator()) as emu:
        monkeypatch.setenv("OLLAMA_HOST", emu.url)
        tools = PromptTools(chat_services(settings, ["ollama"]))
        result = asyncio.run(tools.compress(text, FAL, anchors))
        asks = [json.loads(r.body)["messages"][-1]["content"] for r in emu.calls("POST", "/api/chat")]
    assert result.method == "ollama" and result.missing == () and result.window_hit
    assert len(asks) == 2  # the first answer cut the prompt short
    assert "dropped these elements" in asks[1]
    first_dropped = [a for a in anchors if not present(a, text[:FAL.char_budget(text)])]
    assert first_dropped and all(" + ".join(a.terms) in asks[1] for a in first_dropped)
    assert result.attempts[0]["outcome"] == "refused" and "dropped" in result.attempts[0]["why"]
    assert_every_element_kept(anchors, result.text)


@pytest.mark.parametrize("fault", ["500", "429", "malformed", "timeout"])
def test_the_chain_moves_past_a_failing_service(settings: Settings, monkeypatch: pytest.MonkeyPatch, fault: str) -> None:
    text, anchors = _long_mixed()
    settings.values.setdefault("refiners", {}).setdefault("ollama", {})["timeout_s"] = 0.5
    with running(ollama.OllamaEmulator()) as oll, running(gemini.GeminiEmulator()) as gem:
        oll.fault = fault
        monkeypatch.setenv("OLLAMA_HOST", oll.url)
        monkeypatch.setenv("GEMINI_API_KEY", gemini.KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", gem.url)
        tools = PromptTools(chat_services(settings, ["ollama", "gemini"]))
        result = asyncio.run(tools.compress(text, FAL, anchors))
    assert result.method == "gemini"
    assert result.attempts[0]["service"] == "ollama"
    assert_every_element_kept(anchors, result.text)


def test_a_service_that_keeps_dropping_elements_is_never_used(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    text = f"{STUBBORN_WORD} " + long_prompt(3000, 23)
    anchors = offline_anchors(text)
    with running(ollama.OllamaEmulator()) as oll, running(openai.OpenAIEmulator()) as oai:
        monkeypatch.setenv("OLLAMA_HOST", oll.url)
        monkeypatch.setenv("OPENAI_API_KEY", openai.KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{oai.url}/v1")
        tools = PromptTools(chat_services(settings, ["ollama", "openai"]))
        result = asyncio.run(tools.compress(text, FAL, anchors))
    assert result.method == "offline"  # both services dropped elements twice: refused, not sent
    assert [a["service"] for a in result.attempts] == ["ollama", "ollama", "openai", "openai"]
    assert all(a["outcome"] == "refused" for a in result.attempts)
    assert_every_element_kept(anchors, result.text)


def test_with_every_service_down_the_offline_compressor_does_it(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    text, anchors = _long_mixed()
    with running(ollama.OllamaEmulator()) as oll, running(gemini.GeminiEmulator()) as gem, running(openai.OpenAIEmulator()) as oai:
        for emu in (oll, gem, oai):
            emu.fault = "500"
        monkeypatch.setenv("OLLAMA_HOST", oll.url)
        monkeypatch.setenv("GEMINI_API_KEY", gemini.KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", gem.url)
        monkeypatch.setenv("OPENAI_API_KEY", openai.KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{oai.url}/v1")
        tools = PromptTools.from_settings(settings)
        assert [s.name for s in tools.compressors] == ["ollama", "gemini", "openai"]
        result = asyncio.run(tools.compress(text, FAL, anchors))
    assert result.method == "offline" and [a["service"] for a in result.attempts] == ["ollama", "gemini", "openai"]
    assert_every_element_kept(anchors, result.text)
    assert result.report()["elements_kept"] == len(anchors)


# ---- enhancement -------------------------------------------------------------------------------------------
def test_the_offline_enhancer_adds_and_never_changes_the_subject() -> None:
    prompt = 'Three red apples and the Eiffel Tower beside a sign reading "PARIS".'
    enhanced, added = enhance_offline(prompt, style="flat vector illustration")
    assert enhanced.startswith(prompt) and added
    assert "flat vector illustration" in enhanced
    assert_every_element_kept(offline_anchors(prompt), enhanced)
    again, more = enhance_offline(enhanced, style="flat vector illustration")
    assert again == enhanced and more == []  # nothing left open: unchanged


def test_chat_enhancement_keeps_the_style(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    prompt = "Two owls on a birch branch."
    with running(ollama.OllamaEmulator()) as emu:
        monkeypatch.setenv("OLLAMA_HOST", emu.url)
        tools = PromptTools(enhancers=chat_services(settings, ["ollama"]))
        rewrite = asyncio.run(tools.enhance(prompt, offline_anchors(prompt), style="linocut print"))
    assert rewrite.service == "ollama" and "linocut print" in rewrite.text and "lighting" in rewrite.text
    assert_every_element_kept(offline_anchors(prompt), rewrite.text)


# ---- a run: enhancement as its own step, a version per provider window ------------------------------------------
def test_a_run_enhances_before_iteration_1_and_compresses_per_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "darkroom.toml"
    config.write_text("[providers.offline.capabilities]\nprompt_window_chars = 900\n", encoding="utf-8")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # no local server: the offline tools do it
    long = long_prompt(2512, 31, mixed=True)
    path = write_prompt_set(tmp_path / "set.json", [{"id": "long", "prompt": long},
                                                   {"id": "plain", "prompt": "A red fox on a bench.", "enhance": False}])
    code, out, err = run_cli("run", str(path), "--enhance", "--iterations", "2", "--judge", "offline", "--refiner", "offline")
    assert code == 0, err
    engine = open_database(Settings.from_env())
    with session(engine) as s:
        items = {row.id: row for row in s.exec(select(RunItem))}
        enh = s.exec(select(Refinement).where(Refinement.from_iteration == 0)).all()
        assert len(enh) == 1  # "enhance": false kept the other prompt as written
        enhancement = enh[0]
        assert enhancement.edits[0]["from"].startswith(long[:100]) and enhancement.new_prompt != enhancement.edits[0]["from"]
        first = s.exec(select(Iteration).where(Iteration.run_item_id == enhancement.run_item_id, Iteration.number == 1)).one()
        assert first.prompt_text == enhancement.new_prompt  # the original is kept; iteration 1 is the enhanced text
        version = first.routing["compressed"]["versions"]["offline"]
        assert version["chars_before"] == len(first.prompt_text) and version["missing"] == []
        assert version["elements_kept"] == version["elements"] > 0 and version["ratio"] < 1
        assert f"{version['elements']}/{version['elements']} elements kept" in routing_note(first.routing)  # shown with the image
        assert [c.operation for c in s.exec(select(ProviderCall).where(ProviderCall.operation == "compress"))]  # tried, logged
        view = prompt_detail(s, enhancement.run_item_id).iterations[0]
        assert view.diff is not None and view.rationale.startswith("Enhanced before iteration 1")
        assert any(part.op == "insert" for part in view.diff)  # what the enhancer added, word by word
        desk = {i.item.id: i for i in run_items(s, items[enhancement.run_item_id].run_id)}  # the review desk's view too
        assert desk[enhancement.run_item_id].iterations[0].diff == view.diff
        other = next(i for i in desk.values() if i.item.id != enhancement.run_item_id)
        assert other.iterations[0].diff is None  # "enhance": false: no step before iteration 1
        assert len(items) == 2
    engine.dispose()


# ---- New run page --------------------------------------------------------------------------------------------
def test_new_run_shows_the_analysis_with_a_bar_per_window_and_launches_with_enhancement(monkeypatch: pytest.MonkeyPatch) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.run()
        at.switch_page("pages/new_run.py").run()
        prompts = [{"id": "busy", "prompt": 'Seven cats and a dog, no people, under a sign that says "OPEN".'},
                   {"id": "long", "prompt": long_prompt(2512, 9)}]
        at.file_uploader[0].set_value(("set.json", json.dumps({"prompts": prompts}).encode(), "application/json")).run()
        assert not at.exception, [e.value for e in at.exception]
        texts = [t.value for t in at.text]
        assert "busy (prompts[0].prompt): 63 characters" in texts
        assert any("warning: prompts[0].prompt: counts above 4 (seven cats)" in t for t in texts)
        bars = [p for p in at.get("progress")]
        assert len(bars) == 2  # one per prompt for the one chosen provider (offline)
        [toggle] = [t for t in at.toggle if t.label.startswith("Enhance each prompt")]
        toggle.set_value(True).run()
        [launch] = [b for b in at.button if b.label == "Launch run"]
        launch.click().run()
        assert not at.exception, [e.value for e in at.exception]
        engine = open_database(Settings.from_env())
        with session(engine) as s:
            from pipeline.store.models import Run

            run = s.exec(select(Run)).one()
            assert run.config["enhance"] is True
        engine.dispose()
    finally:
        st.cache_resource.clear()


def test_enhance_must_be_a_boolean(tmp_path: Path) -> None:
    path = write_prompt_set(tmp_path / "set.json", [{"id": "a", "prompt": "A fox.", "enhance": "no"}])
    for command in (["run", str(path), "--enhance"], ["check", str(path)]):
        code, _, err = run_cli(*command)
        assert code == 2 and 'prompts[0].enhance: expected true or false, got "no"' in err


def test_a_refinement_that_outgrows_a_window_is_compressed_before_it_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "darkroom.toml"
    config.write_text("[providers.offline.capabilities]\nprompt_window_chars = 2000\n\n[prompt_tools]\ncompressors = []\n",
                      encoding="utf-8")
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    text = long_prompt(1995, 50)  # fits; the offline refiner's additions will not
    path = write_prompt_set(tmp_path / "set.json", [{"id": "edge", "prompt": text}])
    code, _, err = run_cli("run", str(path), "--iterations", "2")
    assert code == 0, err
    engine = open_database(Settings.from_env())
    with session(engine) as s:
        first, second = s.exec(select(Iteration).order_by(Iteration.number)).all()
    engine.dispose()
    assert first.prompt_text == text and "compressed" not in first.routing
    assert len(second.prompt_text) > 2000  # the refined prompt, kept as the refiner wrote it
    version = second.routing["compressed"]["versions"]["offline"]
    assert version["method"] == "offline" and version["window_hit"] and len(version["text"]) <= 2000
    assert_every_element_kept(offline_anchors(second.prompt_text), version["text"])
