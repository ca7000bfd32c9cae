"""How alike an image and a reference image look, for the offline judge's "same subject?" element.

No model: a joint hue/saturation/value histogram of each (reduced to 64×64; hue 12 bins, only
where colour is saturated enough to have one) and their intersection, 0 (nothing in common) to
1 (the same colours in the same amounts). A variation of a picture, or a render with the
reference worked in, shares most of its colours; an unrelated picture shares few.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

SIDE = 64
HUES, SATS, VALS = 12, 3, 3


def _histogram(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        hsv = np.asarray(im.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR).convert("HSV"), dtype=np.int32)
    h = hsv[..., 0] * HUES // 256
    s = hsv[..., 1] * SATS // 256
    v = hsv[..., 2] * VALS // 256
    h = np.where(s == 0, 0, h)  # a grey has no hue
    counts = np.bincount(((h * SATS + s) * VALS + v).ravel(), minlength=HUES * SATS * VALS).astype(np.float64)
    shares: np.ndarray = counts / counts.sum()
    return shares


def likeness(image: bytes, reference: bytes) -> float:
    """0–1: the share of colour the two images have in common."""
    return float(np.minimum(_histogram(image), _histogram(reference)).sum())
