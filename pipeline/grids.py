"""Splitting a 2×2 grid image into its four cells, or saying why an image is not one.

Image services asked for "a 2×2 grid of variations" answer with one image: four pictures
separated by uniform gutters (often white or black), sometimes inside a uniform border, and
sometimes with no gutters at all, or not as a grid at all. Cutting such an image into quarters
blindly would ruin a single picture, so the cells are found from the gutters themselves:

1. the outer border: rows and columns at each edge that are uniform and of the corners' colour
   (kept only when it is the gutters' colour too: a picture fading to a dark edge is no border);
2. one vertical gutter, a run of uniform columns in the middle band of what is left;
3. in each half, one horizontal gutter the same way, whose flattest lines are the vertical
   gutter's paint exactly (so the halves may split at different heights, and a cell's plain sky
   or dark band is not taken for a gutter);
4. each cell's own uniform margins of the gutter's colour, trimmed.

"Uniform" tolerates JPEG noise: a line counts when nearly all its pixels lie within
:data:`TOLERANCE` grey levels of its mean, along its whole length (the whole height of the image
for the vertical gutter, a whole half's width for a horizontal one: a picture is rarely uniform
that far). Lines are compared by grey and by red minus blue (an orange sky is not a grey gutter),
measured on every :data:`STEP`-th pixel along each line (positions across the lines stay exact),
and a cell's margins only in a window at each edge, so a 1024² grid is analysed in a few
milliseconds. When two runs in the middle band could be the gutter, one clearly flatter than the
others (:data:`FLATTER`) is; otherwise the image is refused.

Where a gutter meets a picture, JPEG ringing leaves gutter lines a few grey levels off. Such a line
still counts as gutter only when it is all of: within :data:`RINGING_GREY` of the gutter's grey;
flat (:data:`RINGING_SPREAD`: a picture's dark or pale edge has texture, ringing has hardly any);
inside the 16-pixel block (MCU) where the picture next to it begins, on either side of the gutter
(ringing stays inside its block); and at most :data:`RINGING_SHARE` as far from the gutter's grey
as that picture's first line (ringing echoes part of the step, a line as far off is the picture
going on). A picture edge within about 4 grey levels of the gutter is inside the noise JPEG
quality 60 leaves in a plain gutter, and is not told apart (nor is it by eye).
Anything that is not exactly one gutter each way, or gives blank or tiny cells, is refused with
the reason, and the caller keeps the image whole.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

TOLERANCE = 24  # grey levels a gutter pixel may differ from its line's mean (JPEG ringing at quality 60 stays inside)
UNIFORM_SHARE = 0.97  # share of a line's pixels within TOLERANCE for the line to count as uniform
FLAT = 6  # grey levels: a gutter has at least one line this flat (a plain sky with a vignette has none)
FLAT_SHARE = 0.9
SAME_GREY = 2  # a gutter line's mean lies this close to the gutter's grey (a plain sky close by is not gutter)
SAME_TINT = 16  # red minus blue: loose, as JPEG blurs colour (an orange sky is 50 away from grey)
CORNERS_AGREE = 8  # grey levels between the corners' means when the image has a border
# JPEG ringing (see the module's docstring): which gutter lines next to a picture still count.
BLOCK = 16  # a JPEG MCU
RINGING_GREY = 10  # grey levels from the gutter's grey (colour is not compared: JPEG bleeds it)
RINGING_SHARE = 0.5  # of the distance of the picture's first line from the gutter's grey
RINGING_SPREAD = 5.0  # mean distance of the line's pixels from its mean (ringing at q60: at most 3.7 measured)
EDGE_WINDOW = 32  # lines measured at first at each edge of a box for its margin
STEP = 4  # every STEP-th pixel along a line is measured
GAP = 3  # non-uniform lines inside a gutter run that are still one gutter (noise)
MIDDLE = (0.3, 0.7)  # where a 2×2 grid's gutter must lie, as a share of the width or height
MIN_CELL_SHARE = 0.2  # a cell narrower or lower than this share of the grid is not a cell
FLATTER = 1.0  # mean grey levels: how much flatter one candidate gutter must be than any other to be the one
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

    def margin(self, colour: Colour) -> tuple[int, bool]:
        """How many leading lines are a margin of ``colour`` (exact ones, and JPEG ringing next to
        the picture: see :meth:`_ringing_ok`), and whether all lines are margin-like (no picture
        seen: the margin may go on past these lines)."""
        exact = self.of_colour(colour, SAME_GREY)
        near = self._near(colour)
        run = _leading(exact | near)  # the picture starts at line ``run``
        if run >= self.pos.size:
            return _leading(exact), True
        return _leading(self._ringing_ok(colour, exact, near, [run])[:run]), False

    def _near(self, colour: Colour) -> np.ndarray:
        """Lines that may be a gutter's ringing: uniform, flat, close in grey (JPEG bleeds the
        picture's colour into them, so their tint is not compared)."""
        return np.asarray(self.of_colour(colour, RINGING_GREY, np.inf) & (self.spread <= RINGING_SPREAD))

    def _ringing_ok(self, colour: Colour, exact: np.ndarray, near: np.ndarray, pictures: list[int]) -> np.ndarray:
        """Exact lines, and near ones that can be ringing from the picture starting at one of the
        line indices ``pictures``: inside that line's 16-pixel block (ringing stays inside the block)
        and at most :data:`RINGING_SHARE` as far from the gutter's grey as that picture line is
        (ringing echoes a part of the step; a line as far off as the picture is the picture going on)."""
        blocks = self.pos // BLOCK
        off = np.abs(self.mean - colour[0])
        ok = exact.copy()
        for index in pictures:
            step = float(off[index] + self.spread[index])
            ok |= near & (blocks == int(self.pos[index]) // BLOCK) & (off <= RINGING_SHARE * step)
        return ok

    def extent(self, centre: int, colour: Colour) -> tuple[int, int]:
        """The gutter around line ``centre``: the run of gutter-like lines, where ringing is allowed
        next to the pictures on both sides."""
        exact = self.of_colour(colour, SAME_GREY)
        candidate = exact | self._near(colour)
        start = centre - _leading(candidate[centre::-1])
        end = centre + _leading(candidate[centre:])
        pictures = [i for i in (start, end) if 0 <= i < self.pos.size]
        ok = self._ringing_ok(colour, exact, candidate & ~exact, pictures)
        ok[centre] = True
        return centre + 1 - _leading(ok[centre::-1]), centre + _leading(ok[centre:])

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
    """The image as luminance, red and blue planes (uint8 H×W), with the line measurements already
    taken (one split measures a box at most once)."""

    gray: np.ndarray
    red: np.ndarray
    blue: np.ndarray
    measured: dict[tuple[Box, int], _Lines] = field(default_factory=dict)


def _planes(image: Image.Image) -> _Planes:
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    red, _, blue = rgb.split()
    return _Planes(np.asarray(rgb.convert("L")), np.asarray(red), np.asarray(blue))


def _measure(planes: _Planes, box: Box, axis: int) -> _Lines:
    """The columns (``axis`` 0) or rows (``axis`` 1) of ``box``, sampling every :data:`STEP`-th pixel
    along each line (positions across the lines stay exact)."""
    known = planes.measured.get((box, axis))
    if known is not None:
        return known
    x0, y0, x1, y1 = box
    cut = (slice(y0, y1, STEP), slice(x0, x1)) if axis == 0 else (slice(y0, y1), slice(x0, x1, STEP))
    lines = planes.gray[cut] if axis == 0 else np.ascontiguousarray(planes.gray[cut])
    count = max(1, lines.shape[axis])
    mean = lines.mean(axis=axis, dtype=np.float32)
    level = np.expand_dims(np.rint(mean).astype(np.uint8), axis)
    off = np.maximum(lines, level) - np.minimum(lines, level)  # |pixel - the line's mean|, in uint8
    measured = _Lines(
        np.count_nonzero(off <= TOLERANCE, axis=axis) >= UNIFORM_SHARE * count,
        np.count_nonzero(off <= FLAT, axis=axis) >= FLAT_SHARE * count,
        mean, planes.red[cut].mean(axis=axis, dtype=np.float32) - planes.blue[cut].mean(axis=axis, dtype=np.float32),
        np.arange(x0 if axis == 0 else y0, x1 if axis == 0 else y1),
        off.mean(axis=axis, dtype=np.float32),
    )
    planes.measured[(box, axis)] = measured
    return measured


def _edge(planes: _Planes, box: Box, axis: int, from_end: bool, colour: Colour) -> int:
    """How many lines at one edge of ``box`` are a margin of ``colour``: measured in a window at
    that edge, widened while the margin may go on past it (a margin is usually thin)."""
    x0, y0, x1, y1 = box
    size = x1 - x0 if axis == 0 else y1 - y0
    window = EDGE_WINDOW
    while True:
        window = min(window, size)
        if axis == 0:
            part = (x1 - window, y0, x1, y1) if from_end else (x0, y0, x0 + window, y1)
        else:
            part = (x0, y1 - window, x1, y1) if from_end else (x0, y0, x1, y0 + window)
        lines = _measure(planes, part, axis)
        depth, open_ended = (lines.reversed() if from_end else lines).margin(colour)
        if not open_ended or window == size:
            return depth
        window *= 4


def _trim(planes: _Planes, box: Box, colour: Colour) -> Box | None:
    """``box`` without the margins of ``colour`` at each edge (None: nothing left)."""
    x0, y0, x1, y1 = box
    left, right = x0 + _edge(planes, box, 0, False, colour), x1 - _edge(planes, box, 0, True, colour)
    top, bottom = y0 + _edge(planes, box, 1, False, colour), y1 - _edge(planes, box, 1, True, colour)
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
    flatness: list[float] = []  # each candidate's flattest line's spread
    for a, b in _runs(candidates):
        flats = a + np.flatnonzero(lines.flat[a:b] if colour is None else lines.flat[a:b] & lines.of_colour(colour, SAME_GREY)[a:b])
        # (a second gutter is the first one's paint exactly: a flat band of a picture near its grey is not)
        if b <= low or a >= high or not flats.size:
            continue
        # The flattest line is the gutter's middle (a plain picture beside it is flat too, but less so).
        flattest = flats[int(np.argmin(lines.spread[flats]))]
        level = lines.colour(np.array([flattest]))
        flats = flats[lines.of_colour(level, SAME_GREY)[flats]]
        level = lines.colour(flats)
        centre = int(flats[len(flats) // 2])
        start, end = lines.extent(centre, level)
        found.append((start, end, level))
        flatness.append(float(lines.spread[flattest]))
    if len(found) > 1:  # a plain area of a picture in the band is less flat than the gutter's paint
        order = np.argsort(flatness)
        if flatness[order[0]] + FLATTER <= flatness[order[1]]:
            found = [found[order[0]]]
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
    cell = _trim(planes, box, colour)
    if cell is None:
        return "a cell is blank"
    if float(planes.gray[cell[1]:cell[3]:STEP, cell[0]:cell[2]:STEP].std()) < BLANK_STD:
        return "a cell is blank"
    return cell


def _corners(plane: np.ndarray) -> np.ndarray:
    return np.array([plane[:4, :4].mean(), plane[:4, -4:].mean(), plane[-4:, :4].mean(), plane[-4:, -4:].mean()], np.float32)


def find_cells(image: Image.Image) -> GridSplit:
    """The four cells of a 2×2 grid in an image, or why it is not one.

    A border is the gutters' colour: when the corners agree but their colour is not the gutters'
    (a picture fading to a dark or pale edge, not a border), the image is split again untrimmed."""
    planes = _planes(image)
    h, w = planes.gray.shape
    if min(h, w) < 16:
        return GridSplit(reason="the image is too small to be a grid")
    corners = _corners(planes.gray)
    corner_tints = _corners(planes.red) - _corners(planes.blue)
    whole = (0, 0, w, h)
    if float(np.ptp(corners)) > CORNERS_AGREE or float(np.ptp(corner_tints)) > CORNERS_AGREE:
        return _split(planes, whole)[0]
    border = (float(np.median(corners)), float(np.median(corner_tints)))  # there may be a border of their colour
    box = _trim(planes, whole, border)
    if box is None:
        return GridSplit(reason="the image is blank")
    split, gutter = _split(planes, box)
    if box == whole or not split.is_grid or (abs(border[0] - gutter[0]) <= RINGING_GREY and abs(border[1] - gutter[1]) <= SAME_TINT):
        return split
    untrimmed, _ = _split(planes, whole)
    return untrimmed if untrimmed.is_grid else split


def _split(planes: _Planes, box: Box) -> tuple[GridSplit, Colour]:
    """The cells inside ``box`` (a grid without its border), and the gutters' colour."""
    x0, y0, x1, y1 = box
    vertical = _gutter(_measure(planes, box, 0), "vertical")
    if isinstance(vertical, str):
        return GridSplit(reason=vertical), (0.0, 0.0)
    gl, gr, colour = vertical
    halves: list[tuple[Box, Box]] = []
    for a, b, side in ((0, gl, "left"), (gr, x1 - x0, "right")):
        horizontal = _gutter(_measure(planes, (x0 + a, y0, x0 + b, y1), 1), "horizontal", colour)  # gutters share one colour
        if isinstance(horizontal, str):
            return GridSplit(reason=f"{horizontal} ({side} half)"), colour
        gt, gb, _ = horizontal
        halves.append(((x0 + a, y0, x0 + b, y0 + gt), (x0 + a, y0 + gb, x0 + b, y1)))
    cells: list[Box] = []
    for rough in (halves[0][0], halves[1][0], halves[0][1], halves[1][1]):  # reading order
        cell = _cell(planes, rough, colour)
        if isinstance(cell, str):
            return GridSplit(reason=cell), colour
        cells.append(cell)
    for left, top, right, bottom in cells:
        if right - left < MIN_CELL_SHARE * (x1 - x0) or bottom - top < MIN_CELL_SHARE * (y1 - y0):
            return GridSplit(reason=f"a cell of {right - left}x{bottom - top} is too small for a grid of {x1 - x0}x{y1 - y0}"), colour
    return GridSplit(cells=tuple(cells)), colour


@dataclass(frozen=True)
class Cells:
    """An image's split: the cells' boxes and encoded bytes (empty when it is not a grid)."""

    split: GridSplit
    images: tuple[bytes, ...] = ()
    mime_type: str = ""


def decode(data: bytes) -> tuple[Image.Image, str] | str:
    """Encoded image bytes as a loaded RGB image and its format, or why they are not an image."""
    try:
        im = Image.open(io.BytesIO(data))  # from memory: nothing to close
        fmt = im.format or ""
        im.load()
        return (im if im.mode == "RGB" else im.convert("RGB")), fmt
    except Exception as e:  # Pillow raises many types for garbage input
        return f"not a readable image ({type(e).__name__})"


def crop(image: Image.Image, split: GridSplit) -> list[Image.Image]:
    """The cells of ``split`` cut out of ``image`` (in reading order)."""
    return [image.crop(box) for box in split.cells]


def encode(cells: list[Image.Image], fmt: str, *, jpeg_quality: int = 95) -> tuple[tuple[bytes, ...], str]:
    """Each cell encoded as the original was (JPEG stays JPEG at ``jpeg_quality``, anything else
    becomes PNG), and the MIME type."""
    images = []
    for cell in cells:
        buf = io.BytesIO()
        if fmt == "JPEG":
            cell.save(buf, "JPEG", quality=jpeg_quality)
        else:
            cell.save(buf, "PNG", compress_level=1)
        images.append(buf.getvalue())
    return tuple(images), "image/jpeg" if fmt == "JPEG" else "image/png"


def split_image(data: bytes, *, jpeg_quality: int = 95) -> Cells:
    """Split encoded image bytes into its cells, each encoded as the original was (see
    :func:`encode`). Bytes Pillow cannot read are not a grid."""
    decoded = decode(data)
    if isinstance(decoded, str):
        return Cells(GridSplit(reason=decoded))
    image, fmt = decoded
    split = find_cells(image)
    if not split.is_grid:
        return Cells(split)
    images, mime = encode(crop(image, split), fmt, jpeg_quality=jpeg_quality)
    return Cells(split, images, mime)
