"""The offline provider's answer to "a 2×2 grid of variations": four renders of the prompt (seeds
seed…seed+3) on a white canvas with thin gutters, as an image service lays out such a grid.
Reference images are worked into each cell, as the single render does."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

from PIL import Image

from pipeline.components import ReferenceImage
from pipeline.services.offline.references import apply_references
from pipeline.services.offline.render import render

GRID_REQUEST = re.compile(r"\b2\s*[x×]\s*2\s+grid\b", re.IGNORECASE)
GUTTER_SHARE = 0.016  # of the width
WHITE = (255, 255, 255)


def wants_grid(prompt: str) -> bool:
    return GRID_REQUEST.search(prompt) is not None


def render_grid(prompt: str, *, seed: int, width: int, height: int, fmt: str = "JPEG", quality: int = 90,
                references: Sequence[ReferenceImage] = ()) -> bytes:
    gutter = max(4, int(width * GUTTER_SHARE))
    cell_w, cell_h = (width - gutter) // 2, (height - gutter) // 2
    canvas = Image.new("RGB", (width, height), WHITE)
    for k in range(4):
        data = render(prompt, seed=(seed + k) % 2**32, width=cell_w, height=cell_h, fmt="PNG")
        if references:
            data = apply_references(data, references, fmt="PNG", quality=quality)
        with Image.open(io.BytesIO(data)) as cell:
            canvas.paste(cell.convert("RGB"), ((k % 2) * (width - cell_w), (k // 2) * (height - cell_h)))
    out = io.BytesIO()
    canvas.save(out, format=fmt, **({"quality": quality} if fmt.upper() in ("JPEG", "WEBP") else {}))
    return out.getvalue()
