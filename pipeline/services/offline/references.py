"""How the offline provider uses reference images: visibly, so a test can see that they arrived.

A ``style`` reference pulls the render's colours a third of the way toward its average colour;
each ``subject`` or ``composition`` reference is inset as a small framed thumbnail along the
bottom edge (the character or subject "appears" in the picture). Deterministic, like the render.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageOps, ImageStat

from pipeline.components import ReferenceImage

INSET_SHARE = 0.2  # of the shorter side
STYLE_PULL = 0.33


def apply_references(data: bytes, references: Sequence[ReferenceImage], *, fmt: str, quality: int) -> bytes:
    """``data`` (a rendered image) with ``references`` worked in, encoded as ``fmt``."""
    with Image.open(io.BytesIO(data)) as opened:
        img = opened.convert("RGB")
    side = max(8, int(min(img.size) * INSET_SHARE))
    x = side // 8
    for ref in references:
        with Image.open(io.BytesIO(ref.data)) as opened:
            ref_img = opened.convert("RGB")
        if ref.role == "style":
            mean = tuple(int(v) for v in ImageStat.Stat(ref_img.resize((32, 32))).mean[:3])
            img = Image.blend(img, Image.new("RGB", img.size, mean), STYLE_PULL)
        elif ref.role in ("subject", "composition") and x + side <= img.width:
            inset = ImageOps.expand(ImageOps.fit(ref_img, (side - 4, side - 4)), border=2, fill=(255, 255, 255))
            img.paste(inset, (x, img.height - side - side // 8))
            x += side + side // 8
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": quality} if fmt.upper() in ("JPEG", "WEBP") else {}))
    return out.getvalue()
