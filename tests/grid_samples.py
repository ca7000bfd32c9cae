"""Grid images made with Pillow, with the true cell boxes, for tests/test_grids.py and bench/grids.py.

Cells are scenes from the offline renderer (gradients, vignettes, texture, shapes: real picture
content, not flat test cards), laid out on a canvas with the given border and gutters.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from pipeline.services.offline.render import render

Box = tuple[int, int, int, int]
PROMPTS = (
    "a red fox in a snowy forest at dawn, soft light",
    "a neon city street at night, rain, vivid colours",
    "a lighthouse on a cliff above a stormy sea, dramatic",
    "a bowl of lemons on a wooden table, warm light, close-up",
    "mountains at sunset over a calm lake, wide shot",
    "a busy market with many people under colourful awnings",
    "a black cat on a white sofa, minimal, high contrast",
    "an astronaut floating above the moon, crisp focus",
)


@dataclass(frozen=True)
class Layout:
    width: int = 1024
    height: int = 1024
    border: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, top, right, bottom
    vertical_gutter: int = 16  # between the left and the right column
    horizontal_gutter: int = 16  # between the top and the bottom row
    colour: tuple[int, int, int] = (255, 255, 255)  # of the border and the gutters
    split_x: float = 0.5  # where the vertical gutter is, as a share of the inner width
    split_y: float = 0.5


def make_grid(layout: Layout, *, seed: int = 1, fmt: str = "JPEG", quality: int = 60) -> tuple[bytes, list[Box]]:
    """A 2×2 grid image and its four cell boxes in reading order."""
    lo = layout
    left, top, right, bottom = lo.border
    inner_w, inner_h = lo.width - left - right, lo.height - top - bottom
    col_w = int((inner_w - lo.vertical_gutter) * lo.split_x)
    row_h = int((inner_h - lo.horizontal_gutter) * lo.split_y)
    xs = [(left, left + col_w), (left + col_w + lo.vertical_gutter, lo.width - right)]
    ys = [(top, top + row_h), (top + row_h + lo.horizontal_gutter, lo.height - bottom)]
    canvas = Image.new("RGB", (lo.width, lo.height), lo.colour)
    boxes: list[Box] = []
    for r, (y0, y1) in enumerate(ys):
        for c, (x0, x1) in enumerate(xs):
            k = seed * 4 + r * 2 + c
            cell = Image.open(io.BytesIO(render(PROMPTS[k % len(PROMPTS)], seed=k, width=x1 - x0, height=y1 - y0, fmt="PNG")))
            canvas.paste(cell.convert("RGB"), (x0, y0))
            boxes.append((x0, y0, x1, y1))
    return encode(canvas, fmt, quality), boxes


def encode(im: Image.Image, fmt: str = "JPEG", quality: int = 60) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=quality)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


def single_picture(prompt: str, *, seed: int = 7, width: int = 1024, height: int = 1024) -> bytes:
    """One scene, no gutters: what a service sends when it ignores the grid request."""
    return render(prompt, seed=seed, width=width, height=height, fmt="JPEG", quality=60)
