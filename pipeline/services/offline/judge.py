"""The offline judge: measures real properties of the image, no model involved.

It reads the *original* prompt's visual intent (:mod:`pipeline.prompts.lexicon`) and measures, on a
copy of the image reduced to a fixed size so scores compare across sizes:

- exposure: mean luminance against the band the prompt's light words ask for
- contrast: RMS contrast (std of luminance) against what was asked (soft fog vs dramatic)
- sharpness: mean absolute Laplacian of luminance (edge energy)
- colourfulness: Hasler & Süsstrunk (2003) M
- palette match: share of pixels near each colour the prompt names
- size match: delivered size against the requested size

It answers each element it can measure with evidence, reports every shortfall as an issue with
a concrete prompt change, and leaves the overall score to :mod:`pipeline.runs.scoring`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.components import Check, Decomposition, Element, EvaluationRequest, Issue, Judge, Judgement
from pipeline.prompts import lexicon
from pipeline.prompts.elements import REFERENCE_TUPLE, visual_elements

if TYPE_CHECKING:  # numpy and PIL load with the first measurement, not when the judge is registered (every page's start)
    import numpy as np

SHARPNESS_TARGET = 0.030  # edge energy of a crisp render at the analysis size
SOFT_LIMIT = 0.012
COLOUR_PRESENT_SHARE = 0.04  # a named colour must cover 4 % of the image to count as present
HUE_TOLERANCE = 20.0  # degrees

# Concrete prompt changes, phrased in the lexicon's words so the renderer reacts to them.
SUGGESTIONS = {
    ("exposure", "low"): "well-lit subject",
    ("exposure", "high"): "subdued lighting",
    ("contrast", "low"): "high contrast",
    ("contrast", "high"): "soft diffuse light",
    ("sharpness", "low"): "crisp focus, fine detail",
    ("sharpness", "high"): "soft focus",
    ("colourfulness", "low"): "vivid saturated colours",
    ("colourfulness", "high"): "muted palette",
}


@dataclass(frozen=True)
class Measurements:
    width: int
    height: int
    exposure: float
    contrast: float
    sharpness: float
    colourfulness: float
    colour_share: dict[str, float]


def _colour_share(h: np.ndarray, s: np.ndarray, v: np.ndarray, name: str) -> float:
    """Share of pixels of colour ``name``; ``h`` in degrees, ``s`` and ``v`` in 0–1."""
    import numpy as np

    if name in lexicon.ACHROMATIC:
        grey = s < 0.18
        mask = {
            "white": grey & (v > 0.8), "ivory": grey & (v > 0.8), "black": v < 0.16,
            "charcoal": grey & (v >= 0.12) & (v < 0.35), "silver": grey & (v >= 0.6) & (v <= 0.85),
        }.get(name, grey & (v >= 0.3) & (v <= 0.7))
    else:
        target = lexicon.hue_of(name)
        distance = np.abs((h - target + 180.0) % 360.0 - 180.0)
        mask = (distance <= HUE_TOLERANCE) & (s >= 0.15) & (v >= 0.15)
    return float(mask.mean())


def measure(data: bytes, colours: tuple[str, ...], analysis_side: int = 320) -> Measurements:
    import numpy as np

    from pipeline.images import preview

    im, (width, height) = preview(data, analysis_side)
    rgb = np.asarray(im, dtype=np.float32)
    luma = (rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)) / 255.0
    lap = 4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourfulness = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    shares: dict[str, float] = {}
    if colours:  # a share of pixels needs no fine detail: a half-size copy is plenty
        hsv = np.asarray(im.reduce(2).convert("HSV"), dtype=np.float32)
        h, s, v = hsv[..., 0] * (360.0 / 255.0), hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
        shares = {c: _colour_share(h, s, v, c) for c in colours}
    return Measurements(
        width=width,
        height=height,
        exposure=float(luma.mean()),
        contrast=float(luma.std()),
        sharpness=float(np.abs(lap).mean()),
        colourfulness=colourfulness,
        colour_share=shares,
    )


def _ratio_score(value: float, target: float) -> float:
    return round(10.0 * max(0.0, min(1.0, value / target)), 2)


def _ceiling_score(value: float, limit: float) -> float:
    return 10.0 if value <= limit else round(10.0 * max(0.0, 1.0 - (value - limit) / limit), 2)


class OfflineJudge(Judge):
    name = "offline"
    label = "offline: measures the image, no model"
    offline = True

    async def decompose(self, prompt: str) -> Decomposition:
        return Decomposition(visual_elements(prompt), model=self.model, cost_usd=0.0)

    async def evaluate(self, request: EvaluationRequest) -> Judgement:
        return await asyncio.to_thread(self.judge_sync, request)

    def judge_sync(self, request: EvaluationRequest) -> Judgement:
        intent = lexicon.read(request.original_prompt)
        wanted = tuple(dict.fromkeys([*intent.colours, *intent.avoided_colours]))
        m = measure(request.image, wanted, int(self.settings.get("analysis_side", 320)))
        criteria: dict[str, float | None] = {}
        issues: list[Issue] = []

        def grade(criterion: str, value: float, measured: str, fmt: str, *, problem: str,
                  at_least: float | None = None, at_most: float | None = None) -> None:
            """Score ``value`` against a floor or a ceiling; a score under 7 becomes an issue."""
            if at_most is not None:
                score, direction, want = _ceiling_score(value, at_most), "high", f"≤ {at_most:{fmt}}"
            else:
                assert at_least is not None
                score, direction, want = _ratio_score(value, at_least), "low", f"≥ {at_least:{fmt}}"
            criteria[criterion] = score
            if score < 7.0:
                # Quality shortfalls rank below a missing element (severity 1.0): fix what was asked first.
                issues.append(Issue(kind=criterion, description=f"{problem}: {measured} {value:{fmt}}, want {want}",
                                    suggestion=SUGGESTIONS[(criterion, direction)], severity=round(0.95 * (10.0 - score) / 10.0, 3)))

        # Exposure: a band the prompt's light words ask for, scored by the distance outside it.
        low, high = intent.exposure_band
        distance = max(low - m.exposure, m.exposure - high, 0.0)
        criteria["exposure"] = exposure = round(max(0.0, 10.0 - 40.0 * distance), 2)
        if exposure < 7.0:
            direction = "low" if m.exposure < low else "high"
            issues.append(Issue(kind="exposure", suggestion=SUGGESTIONS[("exposure", direction)],
                                description=f"{'under' if direction == 'low' else 'over'}exposed: mean luminance {m.exposure:.2f}, want {low:.2f}–{high:.2f}",
                                severity=round(0.95 * (10.0 - exposure) / 10.0, 3)))

        if intent.contrast == "low":
            grade("contrast", m.contrast, "RMS contrast", ".2f", problem="too contrasty for a soft scene", at_most=0.14)
        else:
            grade("contrast", m.contrast, "RMS contrast", ".2f", problem="flat", at_least=0.24 if intent.contrast == "high" else 0.16)
        if intent.detail == "soft":
            grade("sharpness", m.sharpness, "edge energy", ".3f", problem="too crisp for the soft focus asked", at_most=SOFT_LIMIT)
        else:
            grade("sharpness", m.sharpness, "edge energy", ".3f", problem="soft or blurry", at_least=SHARPNESS_TARGET)
        if intent.saturation in ("mono", "muted"):
            grade("colourfulness", m.colourfulness, "colourfulness", ".0f", at_most=6.0 if intent.saturation == "mono" else 40.0,
                  problem="not monochrome" if intent.saturation == "mono" else "too saturated for a muted palette")
        else:
            grade("colourfulness", m.colourfulness, "colourfulness", ".0f", problem="dull colours",
                  at_least=70.0 if intent.saturation == "vivid" else 40.0)

        present = {c: share >= COLOUR_PRESENT_SHARE for c, share in m.colour_share.items()}
        if intent.colours:
            criteria["palette_match"] = round(10.0 * sum(present[c] for c in intent.colours) / len(intent.colours), 2)
        else:
            criteria["palette_match"] = None
        asked_area = request.requested_width * request.requested_height
        got_area = m.width * m.height
        aspect_error = abs(m.width / m.height - request.requested_width / request.requested_height)
        criteria["size_match"] = size_match = round(10.0 * min(asked_area, got_area) / max(asked_area, got_area) * max(0.0, 1.0 - aspect_error), 2)
        if size_match < 10.0:
            issues.append(Issue(kind="size_match", description=f"delivered {m.width}x{m.height}, asked {request.requested_width}x{request.requested_height}",
                                suggestion="", severity=0.1))

        checks = self._answer(request.elements, intent, m, present, criteria, issues)
        checks += self._same_subject(request, issues)
        raw = json.dumps({"measurements": m.__dict__, "criteria": criteria}, default=float)
        return Judgement(criteria=criteria, checks=checks, issues=issues, model=self.model, raw_response=raw,
                         cost_usd=float(self.settings.get("price_per_call", 0.0)))

    def _same_subject(self, request: EvaluationRequest, issues: list[Issue]) -> list[Check]:
        """The "same character / subject as the reference?" elements, answered by colour likeness
        with the closest of the reference images (no reference sent: not answered)."""
        asked = [e for e in request.elements if e.tuple_text.startswith(REFERENCE_TUPLE)]
        if not asked or not request.reference_images:
            return []
        from pipeline.services.offline.likeness import likeness  # numpy and PIL (see the top)

        best = max(likeness(request.image, r.data) for r in request.reference_images)
        threshold = float(self.settings["likeness_threshold"])  # [judges.offline] in defaults.toml
        answer = "yes" if best >= threshold else "no"
        checks = []
        for e in asked:
            evidence = f"colour likeness {best:.2f} with the closest reference image (same at ≥ {threshold:.2f})"
            checks.append(Check(element=e.number, question=e.question, answer=answer, evidence=evidence))  # type: ignore[arg-type]
            if answer == "no":
                issues.append(Issue(kind="element", element=e.number, description=f"not the same subject as the reference: {evidence}",
                                    suggestion="the same subject as in the reference image, same colours and features", severity=1.0))
        return checks

    def _answer(self, elements: tuple[Element, ...], intent: lexicon.VisualIntent, m: Measurements,
                present: dict[str, bool], criteria: dict[str, float | None], issues: list[Issue]) -> list[Check]:
        checks: list[Check] = []
        for e in elements:
            answer: str | None = None
            evidence = ""
            subject = e.tuple_text.rsplit("(", 1)[-1].rstrip(")") if "(" in e.tuple_text else ""
            if e.tuple_text.startswith("attribute - color") and subject in present:
                answer = "yes" if present[subject] else "no"
                evidence = f"{m.colour_share[subject]:.0%} of pixels are {subject} (present at ≥ {COLOUR_PRESENT_SHARE:.0%})"
                if answer == "no":
                    issues.append(Issue(kind="element", element=e.number, description=f"{subject} is missing or too small",
                                        suggestion=f"dominant {subject} tones", severity=1.0))
            elif e.tuple_text.startswith("negation - color") and subject in m.colour_share:
                answer = "yes" if m.colour_share[subject] < COLOUR_PRESENT_SHARE else "no"
                evidence = f"{m.colour_share[subject]:.0%} of pixels are {subject}"
            elif e.tuple_text.startswith("global - lighting"):
                low, high = intent.exposure_band
                answer = "yes" if low <= m.exposure <= high else "no"
                evidence = f"mean luminance {m.exposure:.2f}, band {low:.2f}–{high:.2f}"
            elif e.tuple_text.startswith(("style - contrast", "style - focus", "style - saturation")):
                criterion = {"contrast": "contrast", "focus": "sharpness", "saturation": "colourfulness"}[e.tuple_text.split()[2]]
                score = criteria.get(criterion)
                answer = "yes" if score is not None and score >= 7.0 else "no"
                evidence = f"{criterion} scores {score}/10"
            if answer is not None:
                checks.append(Check(element=e.number, question=e.question, answer=answer, evidence=evidence))  # type: ignore[arg-type]
        return checks
