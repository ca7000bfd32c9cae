"""Grid images made with Pillow, with the true cell boxes, for tests/test_grids.py and bench/grids.py.

Cells are scenes from the offline renderer (gradients, vignettes, texture, shapes: real picture
content, not flat test cards), laid out on a canvas with the given border and gutters.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
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
    # Hard cases: each picture fades, over ``edge`` px towards its boundary, to a tone ``edge_offset``
    # grey levels from the gutter's colour with texture of ``edge_noise`` (a night scene beside a
    # black gutter, a high-key photo beside a white one).
    edge: int = 0
    edge_offset: int = 12
    edge_noise: float = 6.0


WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (128, 128, 128)

# Every layout the tests and bench/grids.py split, JPEG quality 60.
LAYOUTS = {
    "even white gutters": Layout(),
    "even black gutters": Layout(colour=BLACK),
    "uneven gutters and borders": Layout(vertical_gutter=8, horizontal_gutter=30, border=(10, 40, 24, 6)),
    "white border": Layout(border=(32, 32, 32, 32), vertical_gutter=12, horizontal_gutter=12),
    "black border": Layout(colour=BLACK, border=(20, 20, 20, 20)),
    "thin gutters": Layout(vertical_gutter=4, horizontal_gutter=4, colour=BLACK),
    "off-centre gutters": Layout(split_x=0.42, split_y=0.58, vertical_gutter=20, horizontal_gutter=10),
    "grey gutters": Layout(colour=GREY, vertical_gutter=14, horizontal_gutter=22),
    "1536x1024 white": Layout(width=1536, height=1024),
    "1536x1024 black uneven": Layout(width=1536, height=1024, vertical_gutter=24, horizontal_gutter=12, colour=BLACK),
    "1536x1024 bordered off-centre": Layout(width=1536, height=1024, border=(30, 30, 30, 30), split_x=0.45, split_y=0.55),
    # Hard cases: pictures whose edges come close to the gutter's colour. Edges 8 grey levels off
    # with texture, or 12 off and flat, are told apart; 4 levels off is inside the noise JPEG
    # quality 60 leaves in a gutter itself (up to 7 levels) and is not a fair test, even by eye.
    "black gutters, near-black textured edges": Layout(colour=BLACK, edge=24, edge_offset=8, edge_noise=6),
    "white gutters, near-white textured edges": Layout(edge=24, edge_offset=8, edge_noise=6),
    "black border, flat dark edges": Layout(colour=BLACK, border=(20, 20, 20, 20), edge=16, edge_offset=12, edge_noise=0),
    "1536x1024 no border, flat pale edges": Layout(width=1536, height=1024, vertical_gutter=10, horizontal_gutter=24, edge=32, edge_offset=12, edge_noise=0),
    "1536x1024 black uneven, near-black edges": Layout(width=1536, height=1024, colour=BLACK, vertical_gutter=24, horizontal_gutter=8, edge=24, edge_offset=10, edge_noise=4),
}


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
            canvas.paste(_fade_edges(cell.convert("RGB"), lo, k) if lo.edge else cell.convert("RGB"), (x0, y0))
            boxes.append((x0, y0, x1, y1))
    return encode(canvas, fmt, quality), boxes


def _fade_edges(cell: Image.Image, lo: Layout, seed: int) -> Image.Image:
    """``cell`` fading towards a textured tone close to the gutter's colour at its edges."""
    pixels = np.asarray(cell, dtype=np.float32)
    h, w = pixels.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    depth = np.minimum(np.minimum(ys, h - 1 - ys), np.minimum(xs, w - 1 - xs)).astype(np.float32)
    weight = np.clip(1 - depth / lo.edge, 0, 1)[..., None]  # 1 on the boundary, 0 from ``edge`` px in
    gutter = np.array(lo.colour, dtype=np.float32)
    tone = gutter + np.sign(128 - gutter) * lo.edge_offset
    texture = np.random.default_rng(seed).normal(0, lo.edge_noise, (h, w, 1)).astype(np.float32)
    faded = pixels * (1 - weight) + (tone + texture) * weight
    return Image.fromarray(np.clip(np.rint(faded), 0, 255).astype(np.uint8))


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


def _canvas(width: int = 1024, height: int = 1024, colour: tuple[int, int, int] = WHITE) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def paste_picture(canvas: Image.Image, box: Box, seed: int) -> None:
    x0, y0, x1, y1 = box
    picture = Image.open(io.BytesIO(single_picture(PROMPTS[seed % len(PROMPTS)], seed=seed, width=x1 - x0, height=y1 - y0)))
    canvas.paste(picture.convert("RGB"), (x0, y0))


def non_grids() -> dict[str, bytes]:
    """Images that must not be cut (JPEG quality 60): single pictures at both sizes, a framed
    picture, two pictures side by side, a 3×3 grid, a grid with an empty cell, blank and gradient."""
    samples = {
        f"single picture {w}x{h} {k}": single_picture(PROMPTS[k], seed=k, width=w, height=h)
        for k in range(len(PROMPTS)) for w, h in ((1024, 1024), (1536, 1024))
    }
    framed = _canvas()
    paste_picture(framed, (40, 40, 984, 984), seed=3)
    pair = _canvas()
    paste_picture(pair, (0, 0, 504, 1024), seed=1)
    paste_picture(pair, (520, 0, 1024, 1024), seed=2)
    nine = _canvas()
    for r in range(3):
        for c in range(3):
            paste_picture(nine, (c * 344, r * 344, c * 344 + 336, r * 344 + 336), seed=r * 3 + c)
    three = _canvas()
    for k, box in enumerate([(0, 0, 504, 504), (520, 0, 1024, 504), (0, 520, 504, 1024)]):
        paste_picture(three, box, seed=k)
    ramp = np.tile(np.linspace(0, 255, 1024, dtype=np.uint8), (1024, 1))
    samples |= {
        "framed picture": encode(framed), "two pictures side by side": encode(pair), "3x3 grid": encode(nine),
        "grid with an empty cell": encode(three), "blank grey": encode(_canvas(colour=GREY)),
        "gradient": encode(Image.fromarray(ramp).convert("RGB")),
    }
    return samples
