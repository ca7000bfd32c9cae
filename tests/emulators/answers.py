"""What the emulated chat models answer: deterministic elements, judgements and refinements.

Questions mentioning :data:`NO_WORD` are answered "no", so tests see a failed element, a top
issue and a refinement that adds the missing colour.
"""

from __future__ import annotations

import re
from typing import Any

NO_WORD = "purple"  # questions mentioning it are answered "no", so tests can see a failed element


def elements_for(prompt: str) -> dict:
    subject = prompt.split(".")[0].strip() or prompt
    words = [w for w in re.findall(r"[a-z]+", subject.lower()) if len(w) > 3][:3] or ["subject"]
    elements = [{"id": 1, "category": "entity", "tuple": f"entity - whole ({subject})", "question": f"Does the image show {subject}?",
                 "parent_ids": [], "critical": True}]
    for i, w in enumerate(words, 2):
        elements.append({"id": i, "category": "attribute", "tuple": f"attribute ({w})", "question": f"Is there something {w}?",
                         "parent_ids": [1], "critical": True})
    return {"elements": elements}


def judgement_for(text: str) -> dict:
    answers = []
    for number, question in re.findall(r"^(\d+)\. (.+)$", text, re.M):
        no = NO_WORD in question.lower()
        answers.append({"id": int(number), "evidence": "not visible" if no else "clearly visible", "answer": "no" if no else "yes"})
    first_no = next((a["id"] for a in answers if a["answer"] == "no"), None)
    return {"answers": answers, "quality": {"artifacts": "minor", "aesthetics": "good", "text_legible": "n/a"},
            "top_issue": {"element_id": first_no, "description": "the colour is missing" if first_no else "slightly soft focus",
                          "suggested_prompt_change": "add 'vivid purple accents'" if first_no else "add 'crisp focus'"}}


def refinement_for(text: str) -> dict:
    current = text.split("Current prompt:\n", 1)[1].split("\n\n", 1)[0] if "Current prompt:\n" in text else "a prompt"
    return {"prompt": f"{current.rstrip('.')}, with vivid purple accents and crisp focus.", "rationale": "adds the missing colour"}


STUBBORN_WORD = "STUBBORN"  # a prompt containing it is compressed by cutting it short, even when told what was dropped


def _section(text: str, title: str) -> str:
    return text.split(f"{title}:\n", 1)[1].split("\n\n", 1)[0] if f"{title}:\n" in text else ""


def compression_for(text: str) -> dict:
    """Cuts the prompt at the target length (dropping what comes later); told what it dropped, it
    answers the elements that must be kept, joined (unless the prompt is :data:`STUBBORN_WORD`)."""
    prompt = text.split("Prompt:\n", 1)[-1].split("\n\nYour last answer", 1)[0]
    target = int(m.group(1)) if (m := re.search(r"Target: at most (\d+) characters", text)) else 200
    if "Your last answer dropped" in text and STUBBORN_WORD not in prompt:
        keep = [line[2:].replace(" + ", " ") for line in _section(text, "Must keep").splitlines() if line.startswith("- ")]
        return {"prompt": ", ".join(keep)}
    cut = prompt[:target].rsplit(" ", 1)[0] if len(prompt) > target else prompt
    return {"prompt": cut}


def enhancement_for(text: str) -> dict:
    prompt = text.split("Prompt:\n", 1)[-1]
    style = _section(text, "Style").strip()
    extra = "" if style in ("", "(none)") else f", {style}"
    return {"prompt": f"{prompt.rstrip('.')}, cinematic rim lighting, rule-of-thirds composition{extra}.",
            "rationale": "adds lighting and composition"}


def answer_for(schema_title: str, text: str) -> dict[str, Any] | None:
    """The answer to a request constrained by the rubric schema named ``schema_title``, from the user text."""
    if schema_title == "PromptElements":
        return elements_for(text.split("Prompt:\n", 1)[-1])
    if schema_title == "ImageJudgement":
        return judgement_for(text)
    if schema_title == "RefinedPrompt":
        return refinement_for(text)
    if schema_title == "CompressedPrompt":
        return compression_for(text)
    if schema_title == "EnhancedPrompt":
        return enhancement_for(text)
    return None
