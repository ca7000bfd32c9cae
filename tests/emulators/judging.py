"""What the emulated vision judges do with the images they are shown (Gemini, OpenAI, Ollama).

Each chat emulator records the images of every judging request in ``judged_images`` (a list per
request of (MIME type, bytes), in the order sent: the generated image first, then references)
after checking them as its service does. ``reference_verdict`` is how the emulated model answers
"is this the same character / subject as in the reference image?":

- "yes" (default): whatever the rubric answers (yes);
- "no": "no", naming the reference image it compared with, but only when it was shown at least
  one image besides the candidate; a judge that sent no reference gets "unsure" ("no reference
  image was shown"), so a test can tell the two apart.
"""

from __future__ import annotations

import io
import re
from typing import Any

from PIL import Image

SAME = re.compile(r"same (character|subject)", re.I)


def image_format(data: bytes) -> str:
    """The format Pillow reads in ``data`` ("" when it is not an image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return str(image.format or "")
    except (OSError, ValueError):
        return ""


def with_reference_verdict(answer: dict[str, Any] | None, text: str, verdict: str, images: int) -> dict[str, Any] | None:
    """``answer`` (an ImageJudgement) with the reference questions answered as ``verdict`` says."""
    if answer is None or verdict == "yes" or "answers" not in answer:
        return answer
    questions = dict(re.findall(r"^(\d+)\. (.+)$", text, re.M))
    for a in answer["answers"]:
        if not SAME.search(questions.get(str(a["id"]), "")):
            continue
        if images > 1:
            a["answer"], a["evidence"] = "no", f"not the same character: image 1 differs from reference image 2 (of {images - 1})"
        else:
            a["answer"], a["evidence"] = "unsure", "no reference image was shown"
        answer["top_issue"] = {"element_id": a["id"], "description": f"{a['evidence']}",
                               "suggested_prompt_change": "describe the reference character's face, hair and clothes exactly"}
    return answer
