"""The vision judges (Gemini, OpenAI, Ollama) see the prompt's subject references beside the image.

Against each loopback emulator: the generated image goes first and the references after it, in the
service's own wire format (Gemini ``inlineData`` parts, OpenAI ``image_url`` data URLs, Ollama raw
base64 ``images``), with text saying which image is which; too many or too large references are
bounded as configured; and a model's "no, not the same character" becomes a failed check that the
refiner is given, through a whole run from the CLI.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlmodel import select

from pipeline import registry
from pipeline.components import Element, EvaluationRequest, Judgement, ReferenceImage
from pipeline.config import Settings
from pipeline.prompts.elements import reference_elements
from pipeline.store.db import session
from pipeline.store.models import Evaluation
from tests.bundle_samples import portrait, write_zip
from tests.conftest import run_cli
from tests.emulators import Emulator, gemini, ollama, openai

MIRA = "Is this the same character (Mira) as in the reference image?"


def texts_gemini(body: dict[str, Any]) -> tuple[str, str]:
    config = body.get("generationConfig", {})
    schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
    return schema.get("title", ""), " ".join(p["text"] for c in body.get("contents", []) for p in c.get("parts", []) if "text" in p)


def texts_openai(body: dict[str, Any]) -> tuple[str, str]:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return (body.get("response_format") or {}).get("json_schema", {}).get("schema", {}).get("title", ""), text


def texts_ollama(body: dict[str, Any]) -> tuple[str, str]:
    return (body.get("format") or {}).get("title", ""), body["messages"][-1]["content"]


@dataclass(frozen=True)
class Case:
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    texts: Callable[[dict[str, Any]], tuple[str, str]]  # a chat request's (schema title, user text)
    path: str  # where judging requests go


CASES = [
    Case("gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}, texts_gemini,
         "/v1beta/models/gemini-2.5-flash:generateContent"),
    Case("openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}, texts_openai,
         "/v1/chat/completions"),
    Case("ollama", ollama.OllamaEmulator, lambda e: {"OLLAMA_HOST": e.url}, texts_ollama, "/api/chat"),
]


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Case, Any]]:
    c: Case = request.param
    emulator = c.emulator().start()
    try:
        for k, v in c.env(emulator).items():
            monkeypatch.setenv(k, v)
        yield c, emulator
    finally:
        emulator.stop()


def make_judge(name: str, **settings: Any) -> Any:
    return registry.judges.get_class(name)({**Settings.from_env().component("judges", name), "timeout_s": 10, **settings})


def png(side: int, colour: tuple[int, int, int], noisy: bool = False) -> bytes:
    image = Image.effect_noise((side, side), 90).convert("RGB") if noisy else Image.new("RGB", (side, side), colour)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


CANDIDATE = png(64, (200, 60, 40))


def evaluate(judge: Any, refs: tuple[ReferenceImage, ...]) -> Judgement:
    elements = (Element(1, "entity", "Is there a girl in a raincoat?"), *reference_elements(2, ["Mira"], own_subject=False))
    return asyncio.run(judge.evaluate(EvaluationRequest(
        original_prompt="Mira in a yellow raincoat", sent_prompt="Mira in a yellow raincoat.", elements=elements,
        image=CANDIDATE, mime_type="image/png", requested_width=64, requested_height=64, reference_images=refs)))


def sent(case: Case, emulator: Any) -> dict[str, Any]:
    body = [r for r in emulator.requests if r.path == case.path][-1].json()
    assert isinstance(body, dict)
    return body


def test_each_judge_sends_the_image_then_the_references_in_its_wire_format(case: tuple[Case, Any]) -> None:
    c, emulator = case
    refs = (ReferenceImage(portrait((220, 90, 40), "Mira"), "image/png", "subject", "characters/mira.png"),
            ReferenceImage(portrait((220, 90, 40), "Mira 2", seed=3), "image/png", "subject", "characters/mira_side.png"))
    emulator.reference_verdict = "no"
    judgement = evaluate(make_judge(c.name), refs)

    # what the emulator decoded from the wire: the candidate first, then the references, byte for byte
    assert emulator.judged_images[-1] == [("image/png", CANDIDATE), ("image/png", refs[0].data), ("image/png", refs[1].data)]
    body = sent(c, emulator)
    _, text = c.texts(body)
    assert text.startswith("Image 1 is the generated image to judge; images 2–3 are reference images of Mira "
                           "(image 2 is characters/mira.png; image 3 is characters/mira_side.png).")
    assert f"2. {MIRA}" in text
    if c.name == "gemini":  # inline_data parts, then the text part
        parts = body["contents"][0]["parts"]
        assert [("inlineData" in p or "inline_data" in p) for p in parts] == [True, True, True, False]
    elif c.name == "openai":  # image_url parts with data: URLs, then the text part
        content = body["messages"][-1]["content"]
        assert [p["type"] for p in content] == ["image_url", "image_url", "image_url", "text"]
        assert all(p["image_url"]["url"].startswith("data:image/png;base64,") for p in content[:3])
    else:  # raw base64, no data: prefix
        images = body["messages"][-1]["images"]
        assert len(images) == 3 and base64.b64decode(images[1]) == refs[0].data

    # the model's "no, not the same character" is a failed check, and the top issue
    same = next(ch for ch in judgement.checks if ch.element == 2)
    assert same.answer == "no" and "reference image 2" in same.evidence
    assert judgement.top_issue is not None and judgement.top_issue.element == 2


def test_without_references_the_judge_sends_one_image_and_no_label(case: tuple[Case, Any]) -> None:
    c, emulator = case
    emulator.reference_verdict = "no"
    judgement = evaluate(make_judge(c.name), ())
    assert emulator.judged_images[-1] == [("image/png", CANDIDATE)]
    assert "reference images" not in c.texts(sent(c, emulator))[1]
    # the emulated model cannot compare with a reference it was not shown
    assert next(ch for ch in judgement.checks if ch.element == 2).answer == "unsure"


def test_too_many_and_too_large_references_are_bounded_as_configured(case: tuple[Case, Any], caplog: pytest.LogCaptureFixture) -> None:
    c, emulator = case
    small = [ReferenceImage(png(32, (10 * i, 80, 120)), "image/png", "subject", f"faces/{i}.png") for i in range(5)]
    big = ReferenceImage(png(1500, (30, 160, 90)), "image/png", "subject", "faces/big.png")  # 1500 px: scaled down
    noisy = ReferenceImage(png(600, (0, 0, 0), noisy=True), "image/png", "subject", "faces/noise.png")  # too many bytes even as JPEG
    judge = make_judge(c.name, max_reference_images=3, reference_max_side=256, reference_max_bytes=20_000)
    with caplog.at_level(logging.WARNING, logger="pipeline.services.chat"):
        evaluate(judge, (big, noisy, *small))
    images = emulator.judged_images[-1]
    # the candidate, the big one scaled to 256 px as JPEG, then the first two small ones; the noisy one is left out
    assert len(images) == 4 and images[0] == ("image/png", CANDIDATE)
    assert images[1][0] == "image/jpeg" and Image.open(io.BytesIO(images[1][1])).size == (256, 256)
    assert images[2:] == [("image/png", small[0].data), ("image/png", small[1].data)]
    assert all(len(data) <= 20_000 for _, data in images[1:])
    text = c.texts(sent(c, emulator))[1]
    assert "images 2–4 are reference images of Mira (image 2 is faces/big.png; image 3 is faces/0.png; image 4 is faces/1.png)" in text
    logged = caplog.text
    assert "faces/noise.png" in logged and "reference_max_bytes" in logged
    assert "faces/2.png (over max_reference_images = 3)" in logged and "faces/4.png" in logged


def test_a_reference_in_another_format_or_with_transparency_is_sent_as_a_jpeg_over_white() -> None:
    from pipeline.services.judge_images import fitted

    clear = io.BytesIO()
    Image.new("RGBA", (2000, 1000), (255, 0, 0, 0)).save(clear, "PNG")
    picture = fitted(clear.getvalue(), 512, 2_000_000)
    assert picture is not None and picture.mime_type == "image/jpeg"
    with Image.open(io.BytesIO(picture.data)) as image:
        assert image.size == (512, 256) and image.getpixel((5, 5)) == (255, 255, 255)
    gif = io.BytesIO()
    Image.new("P", (40, 40)).save(gif, "GIF")
    from_gif = fitted(gif.getvalue(), 512, 2_000_000)
    assert from_gif is not None and from_gif.mime_type == "image/jpeg"
    kept = fitted(CANDIDATE, 512, 2_000_000)
    assert kept is not None and (kept.mime_type, kept.data) == ("image/png", CANDIDATE)  # a small PNG goes as it is
    assert fitted(b"not an image", 512, 2_000_000) is None


def test_the_label_names_whom_the_references_show() -> None:
    from pipeline.services.judge_images import label, subjects_asked

    elements = reference_elements(3, ["Mira", "Tobi", "Oma Lene"], own_subject=True)
    assert subjects_asked(elements) == ["Mira", "Tobi", "Oma Lene", "the subject"]
    assert label(["a.png", "b.png"], ["Mira", "Tobi"]).startswith(
        "Image 1 is the generated image to judge; images 2–3 are reference images of Mira and Tobi (image 2 is a.png; image 3 is b.png).")
    assert label([], ["Mira"]) == ""


def test_the_shipped_limits_are_configured_for_every_vision_judge() -> None:
    settings = Settings.from_env()
    for name in ("gemini", "openai", "ollama"):
        table = settings.component("judges", name)
        assert table["max_reference_images"] >= 5 and table["reference_max_side"] >= 512 and table["reference_max_bytes"] > 0


def test_a_not_the_same_character_answer_reaches_the_refiner_in_a_run(case: tuple[Case, Any], tmp_path: Path,
                                                                       settings: Settings, engine: Any) -> None:
    c, emulator = case
    emulator.reference_verdict = "no"
    document = {"characters": [{"id": "mira", "name": "Mira", "traits": ["curly red hair", "yellow raincoat"],
                                "reference_images": ["characters/mira.png"]}],
                "prompts": [{"id": "page_01", "prompt": "Mira waves from the lighthouse door", "characters": ["mira"]}]}
    face = portrait((220, 90, 40), "Mira")
    bundle = write_zip(tmp_path / "mira.zip", {"prompts.json": json.dumps(document).encode(), "characters/mira.png": face})
    result = run_cli("run", bundle, "--output", tmp_path / "out", "--iterations", "2", "--judge", c.name, "--refiner", c.name)
    assert result.code == 0, result.err

    chats = [c.texts(r.json()) for r in emulator.requests if r.path == c.path]
    judged = [text for title, text in chats if title == "ImageJudgement"]
    refined = [text for title, text in chats if title == "RefinedPrompt"]
    assert len(judged) == 2 and len(refined) == 1
    # every judging request carried the generated image and Mira's reference, in that order
    assert [len(images) for images in emulator.judged_images if len(images)] == [2, 2]
    assert all(images[1] == ("image/png", face) for images in emulator.judged_images if images)
    assert all(t.startswith("Image 1 is the generated image to judge; image 2 is a reference image of Mira (characters/mira.png).")
               for t in judged)
    # the judge's "no" is stored as a failed check and handed to the refiner as a failed requirement
    with session(engine) as s:
        evaluations = s.exec(select(Evaluation)).all()
    answers = [next(ch for ch in ev.checks if ch["question"] == MIRA) for ev in evaluations]
    assert [a["answer"] for a in answers] == ["no", "no"]
    failed = refined[0].split("Failed requirements:", 1)[1].split("Top issue:", 1)[0]
    assert f"- {MIRA} (seen: not the same character" in failed
    assert os.path.isdir(tmp_path / "out")
