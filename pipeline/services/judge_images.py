"""The images a vision judge is shown: the generated image first, then the prompt's subject and
character references, bounded by the judge's configuration and named in the question text.

A judge answering "is this the same character as in the reference image?" must see that reference.
Each chat service sends these :class:`Picture` objects in its own wire format (Gemini ``inline_data``
parts, OpenAI ``image_url`` data URIs, Ollama's base64 ``images``); this module decides which go:

- at most ``max_reference_images`` references (the first ones, in the prompt set's order);
- a reference larger than ``reference_max_side`` pixels or ``reference_max_bytes``, or in a format
  other than PNG/JPEG, is scaled down with Pillow and re-encoded as JPEG (a judge compares looks; it needs no 4K original);
- one still over ``reference_max_bytes`` (or unreadable) is left out, and the log says why.

The text then says which image is which: "Image 1 is the generated image; images 2–3 are reference
images (…)", so the model does not judge a reference in place of the candidate.
"""

from __future__ import annotations

import functools
import io
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.components import Element, ReferenceImage
from pipeline.errors import human_bytes
from pipeline.prompts.elements import REFERENCE_TUPLE

log = logging.getLogger("pipeline.services.judge_images")

KEPT_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}  # every vision service reads these two
JPEG_QUALITY = 88


@dataclass(frozen=True)
class Picture:
    """An image sent to a chat model: its bytes and their MIME type."""

    data: bytes
    mime_type: str


@dataclass(frozen=True)
class ReferenceLimits:
    count: int
    max_side: int
    max_bytes: int

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ReferenceLimits:
        return cls(count=max(0, int(settings.get("max_reference_images", 4))), max_side=max(16, int(settings.get("reference_max_side", 1024))),
                   max_bytes=max(1, int(settings.get("reference_max_bytes", 2_000_000))))


@dataclass(frozen=True)
class Shown:
    """The references that go with the generated image, and the names of those left out (with why)."""

    pictures: tuple[Picture, ...]
    names: tuple[str, ...]
    left_out: tuple[str, ...] = ()


@functools.lru_cache(maxsize=8)  # a prompt's iterations show the same references (bytes cache their hash)
def fitted(data: bytes, max_side: int, max_bytes: int) -> Picture | None:
    """``data`` as it may be sent: as it is when a PNG or JPEG within ``max_side`` and ``max_bytes``,
    else scaled down and re-encoded as JPEG; None when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError  # Pillow loads with the first image sent to a judge, not with the services

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format in KEPT_FORMATS and max(image.size) <= max_side and len(data) <= max_bytes:
                return Picture(data, KEPT_FORMATS[image.format])
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale (much faster for big photos)
            alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
            flat = image.convert("RGBA" if alpha else "RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
    flat.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if alpha:  # transparency over white: a judge compares what it would see
        ground = Image.new("RGB", flat.size, (255, 255, 255))
        ground.paste(flat, mask=flat.getchannel("A"))
        flat = ground
    buf = io.BytesIO()
    flat.save(buf, "JPEG", quality=JPEG_QUALITY)
    return Picture(buf.getvalue(), "image/jpeg")


def shown(references: Sequence[ReferenceImage], limits: ReferenceLimits) -> Shown:
    """The references a judge is shown (CPU-bound for big images: call it off the event loop)."""
    pictures: list[Picture] = []
    names: list[str] = []
    left_out: list[str] = []
    for i, ref in enumerate(references, 1):
        name = ref.name or f"reference {i}"
        if len(pictures) >= limits.count:
            left_out.append(f"{name} (over max_reference_images = {limits.count})")
            continue
        picture = fitted(ref.data, limits.max_side, limits.max_bytes)
        if picture is None:
            left_out.append(f"{name} (not an image the judge can read)")
        elif len(picture.data) > limits.max_bytes:
            left_out.append(f"{name} ({human_bytes(len(picture.data))} at {limits.max_side} px, over reference_max_bytes = "
                            f"{human_bytes(limits.max_bytes)})")
        else:
            pictures.append(picture)
            names.append(name)
    return Shown(tuple(pictures), tuple(names), tuple(left_out))


def subjects_asked(elements: Sequence[Element]) -> list[str]:
    """Who the "same as the reference?" questions are about: the characters' names, "the subject"."""
    out = []
    for e in elements:
        if e.tuple_text.startswith(REFERENCE_TUPLE):
            m = re.search(r"\(character: (.+)\)$", e.tuple_text)
            out.append(m[1] if m else "the subject")
    return list(dict.fromkeys(out))


def _and(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def label(names: Sequence[str], subjects: Sequence[str] = ()) -> str:
    """What the question text says about the images: which one is judged, which are references (of whom)."""
    if not names:
        return ""
    of = f" of {_and(subjects)}" if subjects else ""
    if len(names) == 1:
        which = f"image 2 is a reference image{of} ({names[0]})"
    else:
        listed = "; ".join(f"image {i} is {n}" for i, n in enumerate(names, 2))
        which = f"images 2–{len(names) + 1} are reference images{of} ({listed})"
    return (f"Image 1 is the generated image to judge; {which}. Answer every question about image 1; a question about "
            f"\"the reference image\" asks whether image 1 shows the same character or subject as the reference image(s).")
