"""Reference images on their way to a service: refused before anything is sent when the
provider's capability table says it cannot take them, and encoded the ways services take them.

A refusal is a :class:`~pipeline.errors.ProviderError` of kind ``bad_request`` (never retried)
naming the provider, the model and the reference (its bundle path), so the user knows which file
to change: too many references, a role or mask the model does not take, a format the service
does not read, or a file over the service's size limit. ``n`` (images per call) is checked here
too, against ``max_n``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

from pipeline.components import GenerationRequest, ReferenceImage
from pipeline.errors import ProviderError, human_bytes
from pipeline.services.capabilities import Capabilities, capabilities_for

_MIME_BY_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
                   "TIFF": "image/tiff", "AVIF": "image/avif", "HEIF": "image/heif"}
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}


def capabilities(service: str, settings: Mapping[str, Any], model: str) -> Capabilities:
    """The capabilities of ``model`` from a provider's own settings table."""
    return capabilities_for(settings, model, where=f"providers.{service}")


def sniffed(data: bytes) -> tuple[str, tuple[int, int]]:
    """The MIME type and size the bytes really have (read from the header only); ("", (0, 0))
    when they are not an image Pillow knows."""
    from PIL import Image, UnidentifiedImageError  # Pillow loads with the first reference image, not with every service module

    try:
        with Image.open(io.BytesIO(data)) as image:
            return _MIME_BY_FORMAT.get(image.format or "", f"image/{(image.format or '').lower()}"), image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return "", (0, 0)


def label(ref: ReferenceImage, index: int) -> str:
    return repr(ref.name) if ref.name else f"#{index}"


def refusal(service: str, model: str, message: str) -> ProviderError:
    return ProviderError(f"{service} ({model}) cannot take this request: {message}", kind="bad_request", retryable=False)


def split(refs: tuple[ReferenceImage, ...]) -> tuple[list[ReferenceImage], ReferenceImage | None]:
    """The references to follow, and the mask (if any)."""
    return [r for r in refs if r.role != "mask"], next((r for r in refs if r.role == "mask"), None)


def check(service: str, model: str, request: GenerationRequest, caps: Capabilities) -> tuple[list[ReferenceImage], ReferenceImage | None]:
    """The request's references (and mask) once they are known to fit ``caps``; else the refusal."""
    if not 1 <= request.n <= caps.max_n:
        raise refusal(service, model, f"{request.n} images per call asked; it makes 1 to {caps.max_n}")
    refs = request.reference_images
    if not refs:
        return [], None
    images, mask = split(refs)
    masks = len(refs) - len(images)
    if masks > 1:
        raise refusal(service, model, f"{masks} masks given; one edit takes one mask")
    if mask is not None and not images:
        raise refusal(service, model, "a mask needs an image to edit (a reference with another role)")
    reason = caps.takes_references(len(images), tuple(r.role for r in refs))
    if reason:
        raise refusal(service, model, f"it {reason}")
    for i, ref in enumerate(refs, 1):
        real, _ = sniffed(ref.data)
        if not real:
            raise refusal(service, model, f"reference {label(ref, i)} is not an image it can read")
        if real not in caps.reference_formats:
            raise refusal(service, model, f"reference {label(ref, i)} is {real}; it takes {', '.join(caps.reference_formats)}")
        if len(ref.data) > caps.reference_max_bytes:
            raise refusal(service, model, f"reference {label(ref, i)} is {human_bytes(len(ref.data))}; "
                                          f"it takes at most {human_bytes(caps.reference_max_bytes)} per image")
    return images, mask


def mime_of(ref: ReferenceImage) -> str:
    """The reference's real type (its bytes win over what it claims)."""
    return sniffed(ref.data)[0] or ref.mime_type


def b64(ref: ReferenceImage) -> str:
    return base64.b64encode(ref.data).decode("ascii")


def data_uri(ref: ReferenceImage) -> str:
    return f"data:{mime_of(ref)};base64,{b64(ref)}"


def filename(ref: ReferenceImage, index: int) -> str:
    """A file name for a multipart part: the bundle's own base name, or one made from the index."""
    base = ref.name.replace("\\", "/").rsplit("/", 1)[-1] if ref.name else ""
    return base or f"reference_{index}.{EXTENSIONS.get(mime_of(ref), 'png')}"


def shares(total: float | None, count: int) -> float | None:
    """A per-call cost split evenly over the call's images (None stays None: the price table decides)."""
    return None if total is None else total / max(1, count)


def has_alpha(data: bytes) -> bool:
    """Whether the image has transparency (an alpha channel, or a transparent palette colour)."""
    from PIL import Image, UnidentifiedImageError  # see sniffed()

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False


def model_for(service: str, settings: Mapping[str, Any], model: str, request: GenerationRequest) -> str:
    """The model a request goes to: the configured one, unless the request has references and that
    model does not take them itself (its own ``model_capabilities`` entry says so), when the
    provider's ``edit_model`` (an edit / image-to-image model) serves it instead."""
    if not request.reference_images or "edit_model" not in settings:
        return model
    own = (settings.get("model_capabilities") or {}).get(model) or {}
    if isinstance(own, Mapping) and int(own.get("reference_images", 0) or 0) > 0:
        return model
    edit_model = str(settings.get("edit_model") or "")
    if not edit_model:
        raise refusal(service, model, f"the model takes no reference images and [providers.{service}] edit_model is not set")
    return edit_model
