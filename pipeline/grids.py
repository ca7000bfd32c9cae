"""Splitting a 2×2 grid image into its four cells, or saying why an image is not one.

Image services asked for "a 2×2 grid of variations" answer with one image: four pictures
separated by uniform gutters (often white or black), sometimes inside a uniform border, and
sometimes with no gutters at all, or not as a grid at all. Cutting such an image into quarters
blindly would ruin a single picture, so the cells are found from the gutters themselves:

1. the outer border: rows and columns at each edge that are uniform and of the corners' colour;
2. one vertical gutter, a run of uniform columns in the middle band of what is left;
3. in each half, one horizontal gutter the same way, of the vertical gutter's grey (so the halves
   may split at different heights, and a cell's plain sky is not taken for a gutter);
4. each cell's own uniform margins of the gutter's colour, trimmed.

"Uniform" tolerates JPEG noise: a line counts when nearly all its pixels lie within
:data:`TOLERANCE` grey levels of its mean. Lines are compared by grey and by red minus blue (an
orange sky is not a grey gutter), measured on every :data:`STEP`-th pixel along each line
(positions across the lines stay exact), so a 1024² grid is analysed in a few milliseconds.
JPEG ringing is allowed for only inside the 16-pixel block where a picture begins.
Anything that is not exactly one gutter each way, or gives blank or tiny cells, is refused with
the reason, and the caller keeps the image whole.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

TOLERANCE = 24  # grey levels a gutter pixel may differ from its line's mean (JPEG ringing at quality 60 stays inside)
UNIFORM_SHARE = 0.97  # share of a line's pixels within TOLERANCE for the line to count as uniform
FLAT = 6  # grey levels: a gutter has at least one line this flat (a plain sky with a vignette has none)
FLAT_SHARE = 0.9
SAME_GREY = 2  # a gutter line's mean lies this close to the gutter's grey (a plain sky close by is not gutter)
SAME_TINT = 16  # red minus blue: loose, as JPEG blurs colour (an orange sky is 50 away from grey)
CORNERS_AGREE = 8  # grey levels between the corners' means when the image has a border
# JPEG ringing and colour bleed make the gutter lines next to a picture less exact in grey and
# colour, but only inside the 16-pixel block (MCU) where the picture begins: lines there that are
# within RINGING_GREY are still gutter; lines like that beyond the block are a dark or plain picture.
BLOCK = 16
RINGING_GREY = 10
MAX_RINGING = BLOCK
STEP = 4  # every STEP-th pixel along a line is measured
GAP = 3  # non-uniform lines inside a gutter run that are still one gutter (noise)
MIDDLE = (0.3, 0.7)  # where a 2×2 grid's gutter must lie, as a share of the width or height
MIN_CELL_SHARE = 0.2  # a cell narrower or lower than this share of the grid is not a cell
BLANK_STD = 3.0  # a cell whose luminance varies less than this is blank

Box = tuple[int, int, int, int]  # left, top, right, bottom (right and bottom exclusive), as Pillow crops
Colour = tuple[float, float]  # grey, red minus blue


@dataclass(frozen=True)
class GridSplit:
    """Where the cells are (left-to-right, top-to-bottom), or why there are none."""

    cells: tuple[Box, ...] = ()
    reason: str = ""  # why the image is not a 2×2 grid; "" when it was split

    @property
    def is_grid(self) -> bool:
        return bool(self.cells)


@dataclass(frozen=True)
class _Lines:
    """Per line (column or row) of an area: uniform (JPEG noise allowed), flat (hardly any), mean grey."""

    uniform: np.ndarray
    flat: np.ndarray
    mean: np.ndarray
    tint: np.ndarray  # mean red minus blue: an orange sky and a grey gutter of the same grey differ here
    pos: np.ndarray  # each line's x or y in the whole image
    spread: np.ndarray  # mean distance of the line's pixels from its mean

    def of_colour(self, colour: Colour, grey_within: float, tint_within: float = SAME_TINT) -> np.ndarray:
        grey, tint = colour
        return np.asarray(self.uniform & (np.abs(self.mean - grey) <= grey_within) & (np.abs(self.tint - tint) <= tint_within))

    def margin(self, colour: Colour) -> int:
        """How many leading lines are a margin of ``colour``: exact ones, then up to :data:`RINGING` close
        ones (JPEG bleeds the picture's colour into them, so only their grey is compared)."""
        depth = _leading(self.of_colour(colour, SAME_GREY))
        ringing = _leading(self.of_colour(colour, RINGING_GREY, np.inf)[depth:])
        if ringing == 0 or ringing > MAX_RINGING or depth + ringing >= self.pos.size:
            return depth
        picture_starts = int(self.pos[depth + ringing])
        return depth + ringing if int(self.pos[depth]) // BLOCK == picture_starts // BLOCK else depth

    def part(self, start: int, stop: int | None = None, step: int = 1) -> _Lines:
        cut = slice(start, stop, step)
        return _Lines(self.uniform[cut], self.flat[cut], self.mean[cut], self.tint[cut], self.pos[cut], self.spread[cut])

    def reversed(self) -> _Lines:
        return self.part(-1 if self.mean.size else 0, None, -1) if self.mean.size else self

    def colour(self, lines: np.ndarray) -> Colour:
        return float(np.median(self.mean[lines])), float(np.median(self.tint[lines]))


def _leading(flags: np.ndarray) -> int:
    """How many leading entries of ``flags`` are True."""
    falses = np.flatnonzero(~flags)
    return int(falses[0]) if falses.size else int(flags.size)


@dataclass(frozen=True)
class _Planes:
    """The image as luminance, red and blue planes (uint8, H×W)."""

    gray: np.ndarray
    red: np.ndarray
    blue: np.ndarray


def _measure(planes: _Planes, box: Box, axis: int) -> _Lines:
    """The columns (``axis`` 0) or rows (``axis`` 1) of ``box``, sampling every :data:`STEP`-th pixel
    along each line (positions across the lines stay exact)."""
    x0, y0, x1, y1 = box
    cut = (slice(y0, y1, STEP), slice(x0, x1)) if axis == 0 else (slice(y0, y1), slice(x0, x1, STEP))
    lines = planes.gray[cut].astype(np.int16)
    count = max(1, lines.shape[axis])
    mean = lines.mean(axis=axis, dtype=np.float32)
    off = np.abs(lines - np.expand_dims(np.rint(mean).astype(np.int16), axis))
    tint = planes.red[cut].mean(axis=axis, dtype=np.float32) - planes.blue[cut].mean(axis=axis, dtype=np.float32)
    return _Lines(
        np.count_nonzero(off <= TOLERANCE, axis=axis) >= UNIFORM_SHARE * count,
        np.count_nonzero(off <= FLAT, axis=axis) >= FLAT_SHARE * count,
        mean, tint, np.arange(x0 if axis == 0 else y0, x1 if axis == 0 else y1), off.mean(axis=axis, dtype=np.float32),
    )


def _trim(cols: _Lines, rows: _Lines, colour: Colour) -> Box | None:
    """The box left after dropping the margins of ``colour`` at each edge (None: nothing left)."""
    left, right = cols.margin(colour), cols.mean.size - cols.reversed().margin(colour)
    top, bottom = rows.margin(colour), rows.mean.size - rows.reversed().margin(colour)
    if left >= right or top >= bottom:
        return None
    return left, top, right, bottom


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, end)`` runs of True, joining runs separated by at most :data:`GAP` False entries."""
    padded = np.concatenate(([False], flags, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    runs: list[tuple[int, int]] = []
    for start, end in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        if runs and start - runs[-1][1] <= GAP:
            runs[-1] = (runs[-1][0], end)
        else:
            runs.append((start, end))
    return runs


def _gutter(lines: _Lines, what: str, colour: Colour | None = None) -> tuple[int, int, Colour] | str:
    """The one gutter in the middle band (of ``colour`` when given): ``(start, end, its colour)``, or why there is none.

    A gutter is a run of uniform lines with a flat one in it; its colour is the flat lines' median,
    and its extent the lines of that colour around them, with the JPEG ringing beside them."""
    size = lines.mean.size
    low, high = int(size * MIDDLE[0]), int(np.ceil(size * MIDDLE[1]))
    candidates = lines.uniform if colour is None else lines.of_colour(colour, RINGING_GREY)
    found: list[tuple[int, int, Colour]] = []
    for a, b in _runs(candidates):
        flats = a + np.flatnonzero(lines.flat[a:b])
        if b <= low or a >= high or not flats.size:
            continue
        # The flattest line is the gutter's middle (a plain picture beside it is flat too, but less so).
        flattest = flats[int(np.argmin(lines.spread[flats]))]
        level = lines.colour(np.array([flattest]))
        flats = flats[lines.of_colour(level, SAME_GREY)[flats]]
        level = lines.colour(flats)
        centre = int(flats[len(flats) // 2])
        before = lines.part(centre - 1, None, -1) if centre else lines.part(0, 0)
        start, end = centre - before.margin(level), centre + lines.part(centre).margin(level)
        found.append((start, end, level))
    if not found:
        return f"no {what} gutter: no uniform line crosses the middle of the image"
    if len(found) > 1:
        return f"{len(found)} {what} gutters near the middle, not one: not a 2×2 grid"
    start, end, level = found[0]
    if start == 0 or end == size:
        return f"the {what} uniform band reaches the edge: one picture with a plain area, not a grid"
    return found[0]


def _cell(planes: _Planes, box: Box, colour: Colour) -> Box | str:
    """``box`` without its own margins of the gutter's ``colour``, or why it is not a cell."""
    x0, y0, x1, y1 = box
    inner = _trim(_measure(planes, box, 0), _measure(planes, box, 1), colour)
    if inner is None:
        return "a cell is blank"
    left, top, right, bottom = inner
    cell = (x0 + left, y0 + top, x0 + right, y0 + bottom)
    if float(planes.gray[cell[1]:cell[3]:STEP, cell[0]:cell[2]:STEP].std()) < BLANK_STD:
        return "a cell is blank"
    return cell


def _corners(plane: np.ndarray) -> np.ndarray:
    return np.array([plane[:4, :4].mean(), plane[:4, -4:].mean(), plane[-4:, :4].mean(), plane[-4:, -4:].mean()], np.float32)


def find_cells(image: Image.Image) -> GridSplit:
    """The four cells of a 2×2 grid in an image, or why it is not one."""
    rgb = np.asarray(image.convert("RGB"))
    planes = _Planes(np.asarray(image.convert("L")), rgb[..., 0], rgb[..., 2])
    h, w = planes.gray.shape
    if min(h, w) < 16:
        return GridSplit(reason="the image is too small to be a grid")
    corners = _corners(planes.gray)
    corner_tints = _corners(planes.red) - _corners(planes.blue)
    box: Box | None = (0, 0, w, h)
    if float(np.ptp(corners)) <= CORNERS_AGREE and float(np.ptp(corner_tints)) <= CORNERS_AGREE:  # there may be a border of their colour
        whole = (0, 0, w, h)
        box = _trim(_measure(planes, whole, 0), _measure(planes, whole, 1), (float(np.median(corners)), float(np.median(corner_tints))))
    if box is None:
        return GridSplit(reason="the image is blank")
    x0, y0, x1, y1 = box
    vertical = _gutter(_measure(planes, box, 0), "vertical")
    if isinstance(vertical, str):
        return GridSplit(reason=vertical)
    gl, gr, colour = vertical
    halves: list[tuple[Box, Box]] = []
    for a, b, side in ((0, gl, "left"), (gr, x1 - x0, "right")):
        horizontal = _gutter(_measure(planes, (x0 + a, y0, x0 + b, y1), 1), "horizontal", colour)  # gutters share one colour
        if isinstance(horizontal, str):
            return GridSplit(reason=f"{horizontal} ({side} half)")
        gt, gb, _ = horizontal
        halves.append(((x0 + a, y0, x0 + b, y0 + gt), (x0 + a, y0 + gb, x0 + b, y1)))
    cells: list[Box] = []
    for rough in (halves[0][0], halves[1][0], halves[0][1], halves[1][1]):  # reading order
        cell = _cell(planes, rough, colour)
        if isinstance(cell, str):
            return GridSplit(reason=cell)
        cells.append(cell)
    for left, top, right, bottom in cells:
        if right - left < MIN_CELL_SHARE * (x1 - x0) or bottom - top < MIN_CELL_SHARE * (y1 - y0):
            return GridSplit(reason=f"a cell of {right - left}x{bottom - top} is too small for a grid of {x1 - x0}x{y1 - y0}")
    return GridSplit(cells=tuple(cells))


@dataclass(frozen=True)
class Cells:
    """An image's split: the cells' boxes and encoded bytes (empty when it is not a grid)."""

    split: GridSplit
    images: tuple[bytes, ...] = ()
    mime_type: str = ""


def split_image(data: bytes, *, jpeg_quality: int = 95) -> Cells:
    """Split encoded image bytes; each cell is encoded as the original was (JPEG stays JPEG at
    ``jpeg_quality``, anything else becomes PNG). Bytes Pillow cannot read are not a grid."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format or ""
            im.load()
            rgb = im.convert("RGB")
    except Exception as e:  # Pillow raises many types for garbage input
        return Cells(GridSplit(reason=f"not a readable image ({type(e).__name__})"))
    split = find_cells(rgb)
    if not split.is_grid:
        return Cells(split)
    out_fmt, mime = ("JPEG", "image/jpeg") if fmt == "JPEG" else ("PNG", "image/png")
    images = []
    for box in split.cells:
        buf = io.BytesIO()
        cell = rgb.crop(box)
        if out_fmt == "JPEG":
            cell.save(buf, "JPEG", quality=jpeg_quality)
        else:
            cell.save(buf, "PNG", compress_level=1)
        images.append(buf.getvalue())
    return Cells(split, tuple(images), mime)
