"""The offline provider, judge and refiner: deterministic, responsive to words, measuring real things."""

from __future__ import annotations

import asyncio
import io

import numpy as np
from PIL import Image

from pipeline.components import EvaluationRequest, Judgement, RefinementRequest
from pipeline.prompts import lexicon
from pipeline.prompts.elements import visual_elements
from pipeline.runs import scoring
from pipeline.services.offline.judge import OfflineJudge, measure
from pipeline.services.offline.refiner import OfflineRefiner
from pipeline.services.offline.render import render


def mean_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32).reshape(-1, 3).mean(axis=0)


def judge(original: str, data: bytes, width: int = 512, height: int = 512) -> Judgement:
    request = EvaluationRequest(original_prompt=original, sent_prompt=original, elements=tuple(visual_elements(original)),
                                image=data, mime_type="image/jpeg", requested_width=width, requested_height=height)
    return asyncio.run(OfflineJudge({"analysis_side": 320}).evaluate(request))


def test_same_inputs_give_the_same_bytes_and_any_change_gives_others() -> None:
    a = render("A red fox in snow", seed=7, width=320, height=240)
    assert a == render("A red fox in snow", seed=7, width=320, height=240)
    assert a != render("A red fox in snow", seed=8, width=320, height=240)
    assert a != render("A blue fox in snow", seed=7, width=320, height=240)
    im = Image.open(io.BytesIO(a))
    assert (im.format, im.size) == ("JPEG", (320, 240))
    assert Image.open(io.BytesIO(render("x", seed=1, width=64, height=96, fmt="PNG"))).format == "PNG"


def test_colour_words_steer_the_palette() -> None:
    red = mean_rgb(render("A red car, dominant red tones", seed=3, width=256, height=256))
    blue = mean_rgb(render("A blue car, dominant blue tones", seed=3, width=256, height=256))
    assert red[0] > red[2] and blue[2] > blue[0]


def test_time_of_day_and_mood_change_exposure() -> None:
    night = mean_rgb(render("A harbour at night, gloomy", seed=3, width=256, height=256)).mean()
    noon = mean_rgb(render("A harbour at noon, bright and cheerful", seed=3, width=256, height=256)).mean()
    assert noon > night + 60


def test_a_refined_prompt_keeps_the_layout_but_visibly_changes_the_look() -> None:
    base = "A teal teapot on a table"
    before = render(base, seed=11, width=256, height=256)
    after = render(base + ". Crisp focus, fine detail.", seed=11, width=256, height=256)
    m_before, m_after = measure(before, ()), measure(after, ())
    assert m_after.sharpness > 2 * m_before.sharpness
    # Same composition: the blurred "after" is close to "before" (the change is focus, not layout).
    a = np.asarray(Image.open(io.BytesIO(before)).convert("L").reduce(16), dtype=np.float32)
    b = np.asarray(Image.open(io.BytesIO(after)).convert("L").reduce(16), dtype=np.float32)
    assert np.abs(a - b).mean() < 12


def test_lexicon_reads_colours_negations_light_and_style() -> None:
    intent = lexicon.read("A golden retriever, no red, at night, vivid, crisp focus, misty")
    assert intent.colours == ("gold",) and intent.avoided_colours == ("red",)
    assert (intent.light, intent.saturation, intent.detail, intent.contrast) == ("dark", "vivid", "sharp", "low")


def test_judge_measures_exposure_against_what_the_prompt_asks() -> None:
    dark = Image.new("RGB", (512, 512), (20, 20, 24))
    buf = io.BytesIO()
    dark.save(buf, "PNG")
    asked_bright = judge("A bright sunny beach", buf.getvalue())
    asked_night = judge("A beach at night", buf.getvalue())
    assert asked_bright.criteria["exposure"] < 3 and asked_night.criteria["exposure"] == 10
    issue = next(i for i in asked_bright.issues if i.kind == "exposure")
    assert issue.description.startswith("underexposed") and issue.suggestion == "well-lit subject"
    assert [c.answer for c in asked_bright.checks] == ["no"]
    assert [c.answer for c in asked_night.checks] == ["yes"]


def test_judge_checks_named_colours_with_evidence_and_flags_missing_ones() -> None:
    im = Image.new("RGB", (512, 512), (40, 80, 210))  # blue
    buf = io.BytesIO()
    im.save(buf, "PNG")
    j = judge("A blue sky over a red barn", buf.getvalue())
    answers = {c.question: (c.answer, c.evidence) for c in j.checks}
    assert answers["Is blue clearly present in the image?"][0] == "yes"
    assert answers["Is red clearly present in the image?"] == ("no", "0% of pixels are red (present at ≥ 4%)")
    assert j.criteria["palette_match"] == 5.0
    assert j.top_issue is not None and j.top_issue.suggestion == "dominant red tones"


def test_judge_penalises_a_blurred_image_and_a_wrong_size() -> None:
    sharp = render("A city street, crisp focus", seed=2, width=512, height=512)
    blurred_im = Image.open(io.BytesIO(sharp)).resize((64, 64)).resize((512, 512))
    buf = io.BytesIO()
    blurred_im.save(buf, "JPEG", quality=95)
    assert judge("A city street", sharp).criteria["sharpness"] > judge("A city street", buf.getvalue()).criteria["sharpness"] + 4
    assert judge("A city street", sharp, width=1024, height=512).criteria["size_match"] < 5


def test_overall_score_is_computed_from_answers_with_dsg_gating() -> None:
    from pipeline.components import Check, Element

    elements = [Element(1, "entity", "Is there a cube?"), Element(2, "attribute", "Is the cube purple?", parent_numbers=(1,))]
    j = Judgement(criteria={"a": 10.0}, checks=[Check(1, "", "no"), Check(2, "", "yes")])
    assert scoring.faithfulness(j.checks, elements) == 0.0  # a child of a failed parent counts 0
    assert scoring.overall(j, elements) == 4.0  # 10 x 0 x 0.6 + 10 x 0.4
    assert scoring.overall(Judgement(criteria={"a": 8.0, "b": None}), []) == 8.0


def test_refiner_turns_issues_into_deterministic_edits_and_keeps_the_original_words() -> None:
    original = "A red barn in a field"
    data = render(original, seed=5, width=384, height=384)
    j = judge(original, data, 384, 384)
    request = RefinementRequest(original_prompt=original, current_prompt=original, judgement=j,
                                failed_checks=tuple(c for c in j.checks if c.answer != "yes"), history=((original, 5.0),))
    refiner = OfflineRefiner({"edits_per_round": 2})
    first, second = asyncio.run(refiner.refine(request)), asyncio.run(refiner.refine(request))
    assert first.prompt == second.prompt and first.prompt.startswith(original)
    top_two = sorted((i for i in j.issues if i.suggestion), key=lambda i: -i.severity)[:2]
    for issue in top_two:
        assert issue.suggestion[:1].upper() + issue.suggestion[1:] in first.prompt
    assert len([e for e in first.edits if e["op"] == "append"]) == len(top_two)
    assert "→ added" in first.rationale


def test_refinement_raises_the_score_whenever_it_changes_the_prompt() -> None:
    original = "A lighthouse on a cliff above a red boat"
    changed = 0
    for seed in range(8):
        first = render(original, seed=seed, width=384, height=384)
        j1 = judge(original, first, 384, 384)
        refined = asyncio.run(OfflineRefiner({"edits_per_round": 2}).refine(
            RefinementRequest(original, original, j1, (), ((original, 0.0),))))
        if refined.prompt == original:
            assert not [i for i in j1.issues if i.suggestion]  # unchanged only when nothing is actionable
            continue
        changed += 1
        j2 = judge(original, render(refined.prompt, seed=seed, width=384, height=384), 384, 384)
        elements = visual_elements(original)
        assert scoring.overall(j2, elements) > scoring.overall(j1, elements), (seed, refined.prompt)
    assert changed >= 4
