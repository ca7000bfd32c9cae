"""Images: the original bytes (ETag, Range), the thumbnail, and a review as the calling reviewer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from pipeline.api import reads, serialize
from pipeline.api.auth import Reviewer
from pipeline.api.context import ctx_of
from pipeline.api.lookups import image_or_404
from pipeline.api.problems import ApiProblem
from pipeline.api.schemas import Review
from pipeline.review.decisions import review_config
from pipeline.review.gallery import image_object
from pipeline.review.ratings import rate, summaries
from pipeline.store.db import session
from pipeline.store.models import MAX_ROW_ID

router = APIRouter(prefix="/v1/images", tags=["images"])
CACHE = "private, max-age=31536000, immutable"  # an iteration's image never changes once made
IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}, "description": "the image"},
    206: {"description": "the requested byte range"}, 304: {"description": "not modified (If-None-Match)"},
    416: {"description": "the range is outside the file"},
}


def _unchanged(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match", "")
    return any(tag.strip().removeprefix("W/") in (etag, "*") for tag in wanted.split(",")) if wanted else False


@router.get("/{image_id}", response_class=Response, responses=IMAGE_RESPONSES, summary="The image's original bytes")
def get_image(request: Request, image_id: int, token: Reviewer) -> Response:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        it = image_or_404(s, image_id)
        store, key = image_object(s, ctx.settings, image_id)
        mime, sha = it.mime_type, it.sha256
    etag = f'"{sha}"' if sha else ""
    headers = {"Cache-Control": CACHE, **({"ETag": etag} if etag else {})}
    path = store.local_path(key)
    if path is not None:  # a data folder: Starlette serves the file (Range included)
        if not path.is_file():
            raise _missing(image_id)
        if etag and _unchanged(request, etag):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=mime or None, headers=headers)
    info = store.info(key)  # a bucket: its size first, so a missing object is a 404 before any byte is sent
    if info is None:
        raise _missing(image_id)
    if etag and _unchanged(request, etag):
        return Response(status_code=304, headers=headers)
    headers["Accept-Ranges"] = "bytes"
    wanted = _byte_range(request.headers.get("range", ""), info.size)
    if wanted is None:
        return StreamingResponse(store.chunks(key), media_type=mime or None, headers={**headers, "Content-Length": str(info.size)})
    start, end = wanted
    if start >= info.size:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{info.size}"})
    return Response(content=store.read_range(key, start, end), status_code=206, media_type=mime or None,
                    headers={**headers, "Content-Range": f"bytes {start}-{end - 1}/{info.size}"})


def _missing(image_id: int) -> ApiProblem:
    return ApiProblem(404, f"image {image_id} is recorded but its file is missing from storage", slug="image-file-missing",
                      title="Image file missing")


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b``, ``bytes=a-`` or ``bytes=-n`` as (start, end exclusive); None for no or another kind of range."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # the last n bytes
        return max(0, size - int(last)), size
    return int(first), min(size, int(last) + 1) if last else size


@router.get("/{image_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}, "description": "the thumbnail"},
    304: {"description": "not modified (If-None-Match)"}}, summary="The gallery's small copy of the image")
async def get_thumbnail(request: Request, image_id: int, token: Reviewer) -> Response:
    """On the event loop: one prepared primary-key read of a small blob (the gallery's hottest request)."""
    ctx = ctx_of(request)
    row = reads.thumbnail(ctx.engine, image_id) if 0 < image_id <= MAX_ROW_ID else None
    if row is None:
        with session(ctx.engine) as s:
            image_or_404(s, image_id)  # says why: no such image, or one that made no image
        raise ApiProblem(404, f"image {image_id} has no thumbnail", slug="image-not-found", title="Image not found")
    data, mime, sha = row
    etag = f'"{sha}-thumb"' if sha else ""
    headers = {"Cache-Control": CACHE, **({"ETag": etag} if etag else {})}
    if etag and _unchanged(request, etag):
        return Response(status_code=304, headers=headers)
    return Response(content=data, media_type=mime, headers=headers)


@router.put("/{image_id}/review", summary="Set the calling reviewer's stars, decision and/or note (only the fields sent)")
def put_review(request: Request, image_id: int, body: Review, token: Reviewer) -> dict[str, Any]:
    ctx = ctx_of(request)
    given = {name: getattr(body, name) for name in body.model_fields_set}
    if not given:
        raise ApiProblem(422, "send at least one of stars, decision, note", slug="invalid-input")
    if given.get("note", "") is None:
        given["note"] = ""
    if "decision" in given and given["decision"] is None:
        given["decision"] = "none"
    cfg = review_config(ctx.settings)
    with session(ctx.engine) as s:
        image_or_404(s, image_id)
        rate(s, image_id, token.name, **given)
        s.commit()
        summary = summaries(s, [image_id], token.name, cfg.decision_rule)[image_id]
    return {"image_id": image_id, "reviewer": token.name, "reviews": serialize.reviews(summary), "links": serialize.image_links(image_id)}
