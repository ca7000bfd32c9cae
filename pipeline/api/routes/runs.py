"""Runs: start one from a prompt set, list them, read one, cancel, resume, and its prompts in full."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile

from pipeline.api import idempotency, itemspage, reads
from pipeline.api.auth import Operator, Reviewer
from pipeline.api.bodies import media_type, parse_json, validated
from pipeline.api.cache import Page, accepts_gzip
from pipeline.api.context import ApiContext, ctx_of
from pipeline.api.launching import launch, spec_from_document, spec_from_upload
from pipeline.api.lookups import decode_cursor, encode_cursor, run_not_found, run_or_404
from pipeline.api.problems import ApiProblem
from pipeline.api.schemas import CreateRun, ItemPage, Resume, RunOptions, RunOut, RunPage
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.review.decisions import review_config
from pipeline.runs import control
from pipeline.runs.records import run_ids_page, run_summaries
from pipeline.store.db import session
from pipeline.store.models import MAX_ROW_ID, RUN_STATUSES

router = APIRouter(prefix="/v1/runs", tags=["runs"])
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"$ref": "#/components/schemas/CreateRun"}},
    "multipart/form-data": {"schema": {"$ref": "#/components/schemas/CreateRunUpload"}},
}}}
FINISHED = ("completed", "failed")


async def _read_request(request: Request, ctx: ApiContext) -> tuple[PromptSetSpec, RunOptions, str]:
    """The prompt set, the options and a fingerprint of the request, from a JSON body or a multipart upload."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4) as form:  # the spooled upload is closed after
            upload, options_text = form.get("prompt_set"), form.get("options", "{}")
            if not isinstance(upload, UploadFile):
                raise RequestValidationError([{"loc": ("prompt_set",), "msg": "attach the prompt set as a file field", "type": "missing"}])
            if not isinstance(options_text, str):
                raise RequestValidationError([{"loc": ("options",), "msg": "a JSON text, not a file", "type": "string_type"}])
            options = validated(RunOptions, parse_json(options_text.encode()))
            digest = hashlib.sha256(options_text.encode())
            await run_in_threadpool(_hash_file, upload, digest)
            spec = await run_in_threadpool(spec_from_upload, ctx.settings, upload.file, upload.filename or "upload")
        return spec, options, idempotency.fingerprint(request.method, request.url.path, digest.hexdigest().encode())
    if kind not in ("application/json", ""):
        raise ApiProblem(415, f"send application/json or multipart/form-data, not {kind}", slug="unsupported-media-type")
    raw = await request.body()
    body: CreateRun = validated(CreateRun, parse_json(raw))
    spec = await run_in_threadpool(spec_from_document, ctx.settings, body.prompt_set)
    return spec, body, idempotency.fingerprint(request.method, request.url.path, raw)


def _hash_file(upload: UploadFile, digest: Any) -> None:
    upload.file.seek(0)
    while chunk := upload.file.read(1 << 20):
        digest.update(chunk)
    upload.file.seek(0)


@router.post("", status_code=202, response_model=RunOut, openapi_extra=REQUEST_BODY,
             summary="Start a run of a prompt set (JSON, or a zip bundle as multipart)")
async def create_run(request: Request, token: Operator) -> JSONResponse:
    ctx = ctx_of(request)
    spec, options, request_hash = await _read_request(request, ctx)

    async def produce() -> idempotency.Produced:
        summary = await run_in_threadpool(launch, ctx, spec, options)
        out = RunOut.of(summary)
        return 202, out.model_dump(mode="json"), {"Location": out.links["self"]}

    return await idempotency.once(request, ctx.engine, token.id, ctx.api.idempotency_hours, request_hash, produce)


@router.get("", response_model=RunPage, summary="The runs, newest first, a page at a time")
def list_runs(request: Request, token: Reviewer, limit: Annotated[int | None, Query(ge=1)] = None,
              cursor: str | None = None, status: Annotated[list[str] | None, Query()] = None,
              q: Annotated[str, Query(max_length=200, description="part of the run's name")] = "") -> RunPage:
    ctx = ctx_of(request)
    size = min(limit or ctx.api.runs_page_size, ctx.api.runs_max_page_size)
    unknown = sorted(set(status or ()) - set(RUN_STATUSES))
    if unknown:
        raise ApiProblem(422, f"status: {', '.join(unknown)} is not one of {', '.join(RUN_STATUSES)}", slug="invalid-input", field="status")
    with session(ctx.engine) as s:
        ids = run_ids_page(s, before=decode_cursor("run", cursor), limit=size + 1, statuses=tuple(status or ()), name_contains=q)
        page = run_summaries(s, run_ids=ids[:size]) if ids else []
    nxt = encode_cursor("run", ids[size - 1]) if len(ids) > size else None
    return RunPage(data=[RunOut.of(r) for r in page], next_cursor=nxt)


@router.get("/{run_id}", response_model=RunOut, summary="A run's status, counts and cost")
def get_run(request: Request, run_id: int, token: Reviewer) -> RunOut:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        run_or_404(s, run_id)
    return RunOut.of(control.summary(ctx.engine, run_id))


@router.post("/{run_id}/cancel", response_model=RunOut, summary="Cancel a run (a running one stops after the grace period)")
def cancel_run(request: Request, run_id: int, token: Operator) -> RunOut:
    ctx = ctx_of(request)
    with session(ctx.engine) as s:
        run = run_or_404(s, run_id)
        if run.status in FINISHED:
            raise ApiProblem(409, f"run {run_id} is already {run.status}; there is nothing to cancel", slug="run-state",
                             title="Not possible in the run's current state")
    if ctx.runner is not None:
        ctx.runner.cancel(run_id)
    else:
        control.cancel(ctx.engine, run_id)
    return RunOut.of(control.summary(ctx.engine, run_id))


@router.post("/{run_id}/resume", status_code=202, response_model=RunOut,
             summary="Queue a stopped run again; only unfinished steps are done (409 for a completed run)")
def resume_run(request: Request, run_id: int, token: Operator, body: Resume | None = None) -> RunOut:
    ctx = ctx_of(request)
    body = body or Resume()
    with session(ctx.engine) as s:
        run_or_404(s, run_id)
    control.resume(ctx.engine, ctx.settings, run_id, retry_failed=body.retry_failed, budget_usd=body.budget_usd,
                   concurrency=body.concurrency)
    ctx.wake_runner()
    return RunOut.of(control.summary(ctx.engine, run_id))


def _items_page(ctx: ApiContext, run_id: int, after: int | None, size: int, reviewer: str, rule: str) -> Page:
    """Core reads straight to JSON values (:mod:`pipeline.api.itemspage`); not validated again."""
    with ctx.engine.connect() as conn:
        data = itemspage.items(conn, run_id, after_position=-1 if after is None else after, limit=size + 1, reviewer=reviewer, rule=rule)
    with session(ctx.engine) as s:
        run = RunOut.of(run_summaries(s, run_ids=[run_id])[0])
    nxt = encode_cursor("item", data[size - 1]["position"]) if len(data) > size else None
    return Page.of(ItemPage.model_construct(run=run, data=data[:size], next_cursor=nxt).model_dump_json().encode())


@router.get("/{run_id}/items", response_model=ItemPage, responses={304: {"description": "not modified (If-None-Match)"}},
            summary="Each prompt with its iterations, scores, prompts and diffs, and reviews")
async def list_items(request: Request, run_id: int, token: Reviewer, limit: Annotated[int | None, Query(ge=1)] = None,
                     cursor: str | None = None) -> Response:
    """A page is kept while the run's version is the same (:func:`pipeline.api.reads.items_version`:
    until a review for a stopped run; at most a second, or until a new step, for an active one).
    The version is one prepared read on the event loop; a page is built on a worker thread only
    when it is not kept, once for all the requests that ask for it meanwhile, with its gzipped
    copy (sent to a client whose ``Accept-Encoding`` allows it, as httpx, requests and browsers do)."""
    ctx = ctx_of(request)
    size = min(limit or ctx.api.items_page_size, ctx.api.items_max_page_size)
    after = decode_cursor("item", cursor)
    rule = review_config(ctx.settings).decision_rule
    key = (run_id, token.name, after, size, rule)
    exists, version = reads.items_version(ctx.engine, run_id) if 0 < run_id <= MAX_ROW_ID else (False, ())
    if not exists:
        raise run_not_found(run_id)
    page = ctx.pages.get(key, version)
    if page is None:
        async with ctx.pages.building(key):  # requests arriving together wait for one build, not sixteen
            page = ctx.pages.get(key, version)
            if page is None:
                page = await run_in_threadpool(_items_page, ctx, run_id, after, size, token.name, rule)
                ctx.pages.put(key, version, page)
    zipped = accepts_gzip(request.headers.get("accept-encoding", ""))
    tag = page.gzip_tag if zipped else page.tag
    headers = {"ETag": tag, "Cache-Control": "private, no-cache", "Vary": "Accept-Encoding"}
    if request.headers.get("if-none-match") in (page.tag, page.gzip_tag):
        return Response(status_code=304, headers=headers)
    if zipped:
        return Response(page.gzipped, media_type="application/json", headers={**headers, "Content-Encoding": "gzip"})
    return Response(page.body, media_type="application/json", headers=headers)
