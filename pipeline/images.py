"""Checking image bytes from providers and making gallery thumbnails.

Bytes are stored exactly as a provider returned them; Pillow only reads them, to check that
they are a real image of the format they claim, within the size limits, and not a
decompression bomb.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.errors import BadImage

if TYPE_CHECKING:  # Pillow loads with the first image checked or decoded, not with every module that needs FORMATS
    from PIL import Image

# Pillow format name -> (mime type, file extension)
FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", "png"),
    "JPEG": ("image/jpeg", "jpg"),
    "WEBP": ("image/webp", "webp"),
    "GIF": ("image/gif", "gif"),
    "BMP": ("image/bmp", "bmp"),
    "TIFF": ("image/tiff", "tif"),
    "AVIF": ("image/avif", "avif"),
}
MIME_TO_FORMAT = {mime: fmt for fmt, (mime, _) in FORMATS.items()} | {"image/jpg": "JPEG"}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime_type: str
    extension: str
    width: int
    height: int
    sha256: str
    byte_size: int


def inspect_image(data: bytes, *, claimed_mime: str | None = None, max_pixels: int = 40_000_000, decode_side: int = 320) -> ImageInfo:
    """Identify ``data`` or raise :class:`BadImage` saying what is wrong with it.

    The image is decoded in full (at ``decode_side``, the thumbnail's size, so the thumbnail
    reuses the copy): a file cut short opens and verifies, and only decoding finds out. Bytes that
    are not a readable image are a malformed answer, worth asking again (``retryable``); an image
    over the pixel limit or in a format we do not take is not (another service may serve it)."""
    from PIL import Image

    if not data:
        raise BadImage("the provider returned an empty body instead of an image", retryable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt = im.format or ""
                width, height = im.size
                if width * height > max_pixels:
                    raise BadImage(f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels")
                im.verify()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"refused a possible decompression bomb: {e}") from None
    except Exception as e:  # Pillow raises many types for garbage input
        head = data[:16]
        raise BadImage(f"not a readable image ({type(e).__name__}); first bytes {head!r}", retryable=True) from None
    if fmt not in FORMATS:
        raise BadImage(f"unsupported image format {fmt or 'unknown'}")
    mime, ext = FORMATS[fmt]
    if claimed_mime:
        claimed = claimed_mime.split(";")[0].strip().lower()
        if claimed in MIME_TO_FORMAT and MIME_TO_FORMAT[claimed] != fmt:
            raise BadImage(f"the provider said {claimed} but the bytes are {mime}", retryable=True)
        if claimed not in MIME_TO_FORMAT and not claimed.startswith("image/") and claimed != "application/octet-stream":
            raise BadImage(f"the provider answered with content type {claimed}, not an image", retryable=True)
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        preview(data, decode_side, sha256)
    except Exception as e:  # noqa: BLE001 (truncated or corrupt pixel data: Pillow raises OSError, SyntaxError, ValueError...)
        raise BadImage(f"the {fmt} image cannot be decoded ({type(e).__name__}: {e}): the file is cut short or corrupt",
                       retryable=True) from None
    return ImageInfo(
        format=fmt,
        mime_type=mime,
        extension=ext,
        width=width,
        height=height,
        sha256=sha256,
        byte_size=len(data),
    )


def open_reduced(data: bytes, longest_side: int) -> tuple[Image.Image, tuple[int, int]]:
    """Decode ``data`` as RGB no larger than ``longest_side``; also return the original size.

    JPEG is decoded straight at a reduced scale (DCT scaling), which skips most of the work.
    """
    from PIL import Image

    im: Image.Image = Image.open(io.BytesIO(data))
    original_size = im.size
    if im.format == "JPEG":
        im.draft("RGB", (longest_side, longest_side))
    im = im.convert("RGB")
    if max(im.size) > longest_side:
        scale = longest_side / max(im.size)
        # BOX averages the pixels each output pixel covers: right for shrinking, and the fastest that is.
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.BOX)
    return im, original_size


_PREVIEWS: OrderedDict[tuple[str, int], tuple[Image.Image, tuple[int, int]]] = OrderedDict()
_PREVIEWS_LOCK = threading.Lock()
PREVIEW_CACHE_SIZE = 64


def preview(data: bytes, side: int, sha256: str | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """A reduced RGB copy of an image and its original size, decoded once and shared.

    The thumbnail (made when the image arrives) and the offline judge (moments later) both
    need a small copy; decoding is most of their cost, so the copy is kept in a small LRU
    cache keyed by content hash. Callers must not modify the returned image.
    """
    key = (sha256 or hashlib.sha256(data).hexdigest(), side)
    with _PREVIEWS_LOCK:
        hit = _PREVIEWS.get(key)
        if hit is not None:
            _PREVIEWS.move_to_end(key)
            return hit
    made = open_reduced(data, side)
    with _PREVIEWS_LOCK:
        _PREVIEWS[key] = made
        while len(_PREVIEWS) > PREVIEW_CACHE_SIZE:
            _PREVIEWS.popitem(last=False)
    return made


@dataclass(frozen=True)
class Thumb:
    data: bytes
    mime_type: str
    width: int
    height: int


def make_thumbnail(data: bytes, *, side: int = 320, fmt: str = "JPEG", quality: int = 82, sha256: str | None = None) -> Thumb:
    """A small copy for the gallery, no longer than ``side`` on its longest edge."""
    im, _ = preview(data, side, sha256)
    buf = io.BytesIO()
    fmt = fmt.upper()
    options = {"quality": quality, "method": 0} if fmt == "WEBP" else {"quality": quality}
    im.save(buf, fmt, **options)
    return Thumb(data=buf.getvalue(), mime_type=FORMATS[fmt][0], width=im.width, height=im.height)
