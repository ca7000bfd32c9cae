"""Grid splitting on grids made with Pillow: every cell within 2 px of the truth, no non-grid cut."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.grids import find_cells, split_image
from tests.grid_samples import GREY, LAYOUTS, PROMPTS, WHITE, Layout, encode, make_grid, non_grids, paste_picture, single_picture

TOLERANCE_PX = 2


def _worst_error(found: tuple[tuple[int, int, int, int], ...], truth: list[tuple[int, int, int, int]]) -> int:
    return max(abs(a - b) for box, true_box in zip(found, truth, strict=True) for a, b in zip(box, true_box, strict=True))


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jpeg_60_grids_are_cut_within_2px(name: str, seed: int) -> None:
    data, truth = make_grid(LAYOUTS[name], seed=seed, quality=60)
    cells = split_image(data)
    assert cells.split.is_grid, cells.split.reason
    assert _worst_error(cells.split.cells, truth) <= TOLERANCE_PX
    assert len(cells.images) == 4 and cells.mime_type == "image/jpeg"
    for image, (x0, y0, x1, y1) in zip(cells.images, truth, strict=True):  # each cell is a real image of about the cell's size
        with Image.open(io.BytesIO(image)) as im:
            assert abs(im.width - (x1 - x0)) <= 2 * TOLERANCE_PX and abs(im.height - (y1 - y0)) <= 2 * TOLERANCE_PX


@pytest.mark.parametrize("layout", [
    Layout(colour=(0, 0, 0), edge=24, edge_offset=20, edge_noise=0),  # a night scene fading to dark grey at the image's edges
    Layout(edge=24, edge_offset=12, edge_noise=6),  # a high-key photo fading to off-white
])
@pytest.mark.parametrize("seed", [3, 5])
def test_pictures_fading_to_a_plain_tone_at_the_image_edges_are_not_a_border(layout: Layout, seed: int) -> None:
    """The four corners agree, but their tone is not the gutters': the edges are picture, not border."""
    data, truth = make_grid(layout, seed=seed, quality=60)
    split = split_image(data).split
    assert split.is_grid, split.reason
    assert _worst_error(split.cells, truth) <= TOLERANCE_PX


def test_png_grid_cells_stay_png() -> None:
    data, truth = make_grid(Layout(), fmt="PNG")
    cells = split_image(data)
    assert _worst_error(cells.split.cells, truth) == 0
    assert cells.mime_type == "image/png" and all(img.startswith(b"\x89PNG") for img in cells.images)


@pytest.mark.parametrize("index", range(len(PROMPTS)))
@pytest.mark.parametrize("size", [(1024, 1024), (1536, 1024)])
def test_a_single_picture_is_not_cut(index: int, size: tuple[int, int]) -> None:
    cells = split_image(single_picture(PROMPTS[index], seed=index, width=size[0], height=size[1]))
    assert not cells.split.is_grid and cells.images == ()
    assert cells.split.reason


def _canvas(width: int = 1024, height: int = 1024, colour: tuple[int, int, int] = WHITE) -> Image.Image:
    return Image.new("RGB", (width, height), colour)


def test_no_sample_non_grid_is_cut() -> None:
    """The bench's non-grids (tests/grid_samples.non_grids), all refused with a reason."""
    cut = {name: split_image(data).split.cells for name, data in non_grids().items()}
    assert {name: cells for name, cells in cut.items() if cells} == {}


def test_a_framed_picture_is_not_cut() -> None:
    canvas = _canvas()
    paste_picture(canvas, (40, 40, 984, 984), seed=3)
    cells = split_image(encode(canvas))
    assert not cells.split.is_grid and "vertical gutter" in cells.split.reason


def test_two_pictures_side_by_side_are_not_a_2x2_grid() -> None:
    canvas = _canvas()
    paste_picture(canvas, (0, 0, 504, 1024), seed=1)
    paste_picture(canvas, (520, 0, 1024, 1024), seed=2)
    cells = split_image(encode(canvas))
    assert not cells.split.is_grid and "horizontal gutter" in cells.split.reason


def test_a_3x3_grid_is_not_a_2x2_grid() -> None:
    canvas = _canvas()
    for r in range(3):
        for c in range(3):
            paste_picture(canvas, (c * 344, r * 344, c * 344 + 336, r * 344 + 336), seed=r * 3 + c)
    cells = split_image(encode(canvas))
    assert not cells.split.is_grid and "2 vertical gutters" in cells.split.reason


def test_blank_and_gradient_images_are_not_grids() -> None:
    assert split_image(encode(_canvas(colour=GREY))).split.reason == "the image is blank"
    ramp = np.tile(np.linspace(0, 255, 1024, dtype=np.uint8), (1024, 1))
    assert not split_image(encode(Image.fromarray(ramp).convert("RGB"))).split.is_grid


def test_a_grid_with_one_empty_cell_is_refused() -> None:
    canvas = _canvas()
    for k, box in enumerate([(0, 0, 504, 504), (520, 0, 1024, 504), (0, 520, 504, 1024)]):
        paste_picture(canvas, box, seed=k)
    cells = split_image(encode(canvas))
    assert not cells.split.is_grid


def test_unreadable_bytes_are_not_a_grid() -> None:
    cells = split_image(b"not an image at all")
    assert not cells.split.is_grid and "not a readable image" in cells.split.reason
    assert find_cells(Image.new("RGB", (8, 8))).reason == "the image is too small to be a grid"
