"""A deterministic scene painter: the offline provider's image, from prompt, seed and size.

The same inputs give the same bytes. The layout (horizon, mountains, buildings, sun or moon,
subject shapes) comes from the seed, the size and the prompt's subject words; the look (palette,
exposure, contrast, saturation, focus, warmth) from the words in :mod:`pipeline.prompts.lexicon`. So a
refinement that only adds "crisp focus" keeps the composition and sharpens it, which is what a
reviewer wants to see side by side.

Speed: shapes are drawn with Pillow at full size; blur is a reduce-then-enlarge; tone is one
lookup table; texture is a tiled noise patch. About 20–35 ms for 1024x1024 JPEG on one core.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from pipeline.prompts import lexicon
from pipeline.prompts.lexicon import COLOURS, RGB, VisualIntent

NOISE_TILE = 256


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class Look:
    palette: tuple[RGB, ...]
    exposure: float  # target mean luminance 0–1
    contrast: float  # tone-curve slope around the mean
    blur: float  # pixels at 1024 px; 0 = crisp
    texture: float  # amplitude of fine detail, 0–40
    mono: bool
    vignette: float  # 0–0.6


def _adjust(rgb: RGB, saturation: float, warmth: str | None) -> RGB:
    r, g, b = (c / 255 for c in rgb)
    hue, lightness, sat = colorsys.rgb_to_hls(r, g, b)
    sat = max(0.0, min(1.0, sat * saturation))
    r, g, b = colorsys.hls_to_rgb(hue, lightness, sat)
    if warmth == "warm":
        r, b = min(1.0, r * 1.1 + 0.03), b * 0.85
    elif warmth == "cool":
        r, b = r * 0.85, min(1.0, b * 1.1 + 0.03)
    return int(r * 255), int(g * 255), int(b * 255)


def _harmony(rng: np.random.Generator, count: int) -> list[RGB]:
    base = rng.random()
    out = []
    for k in range(count):
        hue = (base + k * (0.33 if k % 2 else 0.08)) % 1.0
        r, g, b = colorsys.hls_to_rgb(hue, 0.35 + 0.3 * rng.random(), 0.35 + 0.3 * rng.random())
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def choose_look(intent: VisualIntent, rng: np.random.Generator) -> Look:
    """Named colours paint the subjects, implied ones (sunset, forest) the background; a colour asked
    to be dominant takes the ground and the main subject."""
    avoid = set(intent.avoided_colours)
    named = [COLOURS[n] for n in intent.colours if n not in avoid]
    dominant = [COLOURS[n] for n in intent.dominant if n not in avoid]
    implied = [COLOURS[n] for n in intent.implied_colours if n not in avoid]
    harmony = _harmony(rng, 4)
    background = (implied + harmony)[:3]
    subjects = (named or implied[1:] or harmony[1:]) + harmony
    if dominant:  # the ground and the main subject take it; the sky keeps the scene's light
        background[2] = dominant[0]
        subjects = [dominant[0], *subjects]
    palette = background + subjects[:4]

    # Unrequested qualities vary with the seed, so first renders leave room for refinement.
    saturation = {"vivid": 1.5, "muted": 0.4, "mono": 0.0}.get(intent.saturation or "", 0.3 + 0.6 * rng.random())
    saturation *= intent.saturation_factor
    contrast = {"high": 1.45, "low": 0.5}.get(intent.contrast or "", 0.55 + 0.45 * rng.random())
    blur = {"sharp": 0.0, "soft": 7.0}.get(intent.detail or "", 1.5 + 2.5 * rng.random())
    texture = {"sharp": 26.0, "soft": 0.0}.get(intent.detail or "", 4.0 * rng.random())
    low, high = intent.exposure_band
    exposure = (low + high) / 2 + intent.exposure_shift + (rng.random() - 0.5) * 0.24
    dramatic = intent.contrast == "high" or intent.light == "dark" or intent.exposure_shift < -0.05
    return Look(
        palette=tuple(_adjust(c, saturation, intent.warmth) for c in palette),
        exposure=float(np.clip(exposure, 0.04, 0.92)),
        contrast=contrast,
        blur=blur,
        texture=texture,
        mono=intent.saturation == "mono",
        vignette=0.45 if dramatic else 0.15,
    )


def _gradient(top: RGB, bottom: RGB, rows: int, width: int) -> Image.Image:
    t = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    col = (np.array(top, np.float32) * (1 - t) + np.array(bottom, np.float32) * t).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.broadcast_to(col[:, None, :], (rows, width, 3))))


def _shade(rgb: RGB, factor: float) -> RGB:
    return tuple(int(max(0, min(255, c * factor))) for c in rgb)  # type: ignore[return-value]


def paint_scene(intent: VisualIntent, look: Look, rng: np.random.Generator, width: int, height: int) -> Image.Image:
    w, h = width, height
    pal = look.palette
    comp = intent.composition
    horizon = int(h * (0.08 if "aerial" in comp else 0.66 if "wide" in comp else 0.42 + 0.2 * rng.random()))
    img = Image.new("RGB", (w, h))
    img.paste(_gradient(pal[0], _shade(pal[1], 1.15), max(1, horizon), w), (0, 0))
    img.paste(_gradient(_shade(pal[2], 0.9), _shade(pal[2], 0.45), max(1, h - horizon), w), (0, horizon))
    draw = ImageDraw.Draw(img)
    unit = min(w, h)

    if "sun" in comp or "moon" in comp:
        r = unit * (0.07 + 0.05 * rng.random())
        cx, cy = w * (0.2 + 0.6 * rng.random()), horizon * (0.25 + 0.5 * rng.random())
        disc = (236, 232, 214) if "moon" in comp else _shade(COLOURS["amber"], 1.05)
        draw.ellipse((cx - 1.8 * r, cy - 1.8 * r, cx + 1.8 * r, cy + 1.8 * r), fill=_shade(pal[1], 1.25))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=disc)
    if "mountains" in comp:
        for layer in range(2):
            pts: list[tuple[float, float]] = [(0, horizon)]
            for x in np.linspace(0, w, 7 + layer * 3):
                pts.append((float(x), horizon - unit * (0.12 + 0.22 * rng.random()) / (layer + 1)))
            pts.append((w, horizon))
            draw.polygon(pts, fill=_shade(pal[2], 0.55 + 0.25 * layer))
    if "water" in comp:
        for k in range(6):
            y = horizon + (h - horizon) * (0.1 + 0.15 * k)
            draw.rectangle((0, y, w, y + unit * 0.008), fill=_shade(pal[0], 1.3))
    if "urban" in comp:
        x = 0.0
        while x < w:
            bw = unit * (0.06 + 0.1 * rng.random())
            bh = unit * (0.15 + 0.35 * rng.random())
            draw.rectangle((x, horizon - bh, x + bw, horizon), fill=_shade(pal[2], 0.35 + 0.3 * rng.random()))
            for wy in np.arange(horizon - bh + unit * 0.02, horizon - unit * 0.02, unit * 0.04):
                for wx in np.arange(x + unit * 0.012, x + bw - unit * 0.02, unit * 0.03):
                    if rng.random() < 0.45:
                        draw.rectangle((wx, wy, wx + unit * 0.012, wy + unit * 0.018), fill=pal[3 + int(rng.integers(0, 2))])
            x += bw + unit * 0.01 * rng.random()

    # Subject shapes: one large in a close-up, many small in a busy scene. The main subject
    # (index 0, in the first named colour) is drawn last so nothing hides it.
    count = 1 if ("close" in comp or "minimal" in comp) else 9 if "busy" in comp else 2 + len(intent.subject_words) % 3
    shapes = []
    for i in range(count):
        size = unit * (0.42 if "close" in comp else (0.16 if i == 0 else 0.06) + 0.12 * rng.random())
        cx = w * (0.5 if count == 1 else 0.12 + 0.76 * rng.random())
        cy = h * 0.5 if count == 1 else horizon + (h - horizon) * (0.15 + 0.6 * rng.random()) - size * 0.5
        shapes.append((i, size, cx, cy, 0.7 + 0.6 * rng.random(), rng.random() < 0.5))
    for i, size, cx, cy, squash, round_shape in reversed(shapes):
        colour = pal[3 + i % (len(pal) - 3)]
        box = (cx - size, cy - size * squash, cx + size, cy + size)
        if round_shape:
            draw.ellipse(box, fill=colour, outline=_shade(colour, 0.5), width=max(1, unit // 200))
        else:
            draw.rounded_rectangle(box, radius=size * 0.3, fill=colour, outline=_shade(colour, 0.5), width=max(1, unit // 200))
        draw.ellipse((cx - size * 0.3, box[1] + size * 0.2, cx + size * 0.1, box[1] + size * 0.5), fill=_shade(colour, 1.35))
    return img


def _blur_and_vignette(img: Image.Image, radius_at_1024: float, vignette: float) -> Image.Image:
    """Blur by reducing and enlarging again; the vignette is applied while the image is small."""
    factor = int(round(radius_at_1024 * max(img.size) / 1024))
    if factor < 2:
        return _vignette(img, vignette)
    small = _vignette(img.reduce(factor), vignette)
    return small.resize(img.size, Image.Resampling.BILINEAR)


def _texture(img: Image.Image, amplitude: float, rng: np.random.Generator) -> Image.Image:
    if amplitude < 3:  # finer grain than this is invisible and only slows the encoder
        return img
    tile = rng.integers(0, int(2 * amplitude) + 1, (NOISE_TILE, NOISE_TILE), dtype=np.uint8)
    reps = (img.height // NOISE_TILE + 1, img.width // NOISE_TILE + 1)
    noise = Image.fromarray(np.tile(tile, reps)[: img.height, : img.width]).convert("RGB")
    return ImageChops.add(img, noise, scale=1.0, offset=-int(amplitude))


def _vignette(img: Image.Image, strength: float) -> Image.Image:
    if strength <= 0:
        return img
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    mask = np.clip(1.0 - strength * (xx**2 + yy**2) / 2.0, 0, 1)
    m = Image.fromarray((mask * 255).astype(np.uint8)).resize(img.size, Image.Resampling.BILINEAR)
    return ImageChops.multiply(img, Image.merge("RGB", (m, m, m)))


def _tone(img: Image.Image, exposure: float, contrast: float) -> Image.Image:
    """One lookup table: contrast around the current mean, then shift the mean to ``exposure``."""
    sample = np.asarray(img.reduce(16), dtype=np.float32) / 255.0
    mean = float((sample @ np.array([0.2126, 0.7152, 0.0722], np.float32)).mean())
    x = np.arange(256, dtype=np.float32) / 255.0
    y = np.clip((x - mean) * contrast + exposure, 0.0, 1.0)
    lut = (y * 255 + 0.5).astype(np.uint8).tolist()
    return img.point(lut * 3)


def render(prompt: str, *, seed: int, width: int, height: int, fmt: str = "JPEG", quality: int = 90) -> bytes:
    intent = lexicon.read(prompt)
    layout_rng = np.random.default_rng(_seed("layout", seed, width, height, *intent.subject_words))
    look_rng = np.random.default_rng(_seed("look", seed))
    look = choose_look(intent, look_rng)
    img = paint_scene(intent, look, layout_rng, width, height)
    img = _blur_and_vignette(img, look.blur, look.vignette)
    if look.mono:
        img = img.convert("L").convert("RGB")
    img = _tone(img, look.exposure, look.contrast)
    img = _texture(img, look.texture, np.random.default_rng(_seed("grain", seed)))
    buf = io.BytesIO()
    fmt = fmt.upper()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=quality)
    elif fmt == "PNG":
        img.save(buf, "PNG", compress_level=1)
    else:
        img.save(buf, fmt, quality=quality)
    return buf.getvalue()
