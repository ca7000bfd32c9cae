"""Every error as one JSON shape: RFC 9457 problem details (``application/problem+json``).

``type`` names the kind of problem (``urn:darkroom:problem:<slug>``), ``title`` says it in
words, ``detail`` says what exactly and where; prompt-set problems carry ``errors``, each with
the same JSON path the CLI prints (``prompts[3].id``). No traceback and no secret reaches a
client: an unexpected error is logged and answered with a plain 500.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.errors import (
    ConfigError,
    DarkroomError,
    DiskFull,
    ExportError,
    InputError,
    PromptSetInvalid,
    RunStateError,
    StorageError,
)
from pipeline.redaction import redact

log = logging.getLogger("pipeline.api")
MEDIA_TYPE = "application/problem+json"


class ApiProblem(HTTPException):
    """A problem to answer with: raised anywhere in a request, turned into a response by the handlers.

    An :class:`HTTPException`, so FastAPI passes it through as it is where it wraps other errors
    (a body over the limit raised while FastAPI reads the body stays a 413)."""

    def __init__(self, status: int, detail: str, *, slug: str = "", title: str = "", headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(status, detail, headers)
        self.status, self.detail, self.headers, self.extra = status, detail, headers or {}, extra
        self.slug = slug or HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
        self.title = title or HTTPStatus(status).phrase


def problem_body(status: int, detail: str, *, slug: str, title: str, instance: str = "", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": f"urn:darkroom:problem:{slug}", "title": title, "status": status, "detail": redact(detail)}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def respond(request: Request, problem: ApiProblem) -> JSONResponse:
    body = problem_body(problem.status, problem.detail, slug=problem.slug, title=problem.title, instance=request.url.path,
                        **problem.extra)
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=MEDIA_TYPE)


def from_error(e: DarkroomError) -> ApiProblem:
    """The pipeline's error tree as HTTP means it (the order matters: subclasses first)."""
    if isinstance(e, PromptSetInvalid):
        return ApiProblem(422, f"{len(e.problems)} problem(s) in the prompt set", slug="invalid-prompt-set",
                          title="Invalid prompt set", errors=[{"path": p.path, "message": redact(p.message)} for p in e.problems])
    if isinstance(e, DiskFull):
        return ApiProblem(507, str(e), slug="disk-full", title="Disk full")
    if isinstance(e, InputError):
        extra: dict[str, Any] = {"field": e.field} if e.field else {}
        return ApiProblem(422, str(e), slug="invalid-input", title="Invalid input", **extra)
    if isinstance(e, ConfigError):
        return ApiProblem(422, str(e), slug="invalid-configuration", title="Invalid configuration")
    if isinstance(e, RunStateError):
        return ApiProblem(409, str(e), slug="run-state", title="Not possible in the run's current state")
    if isinstance(e, ExportError):
        return ApiProblem(409, str(e), slug="nothing-to-export", title="Cannot export")
    if isinstance(e, StorageError):
        return ApiProblem(503, str(e), slug="storage-unavailable", title="Storage unavailable")
    return ApiProblem(500, str(e), slug="pipeline-error", title="The pipeline failed")


def _validation_errors(errors: Any) -> list[dict[str, str]]:
    out = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        path = ".".join(loc)
        out.append({"path": path, "message": redact(str(err.get("msg", "invalid")))})
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def on_problem(request: Request, e: ApiProblem) -> JSONResponse:
        return respond(request, e)

    @app.exception_handler(DarkroomError)
    async def on_pipeline_error(request: Request, e: DarkroomError) -> JSONResponse:
        problem = from_error(e)
        if problem.status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, redact(str(e)))
        return respond(request, problem)

    @app.exception_handler(RequestValidationError)
    async def on_invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors())
        if any(err.get("type") == "json_invalid" for err in errors):
            return respond(request, ApiProblem(400, "the request body is not valid JSON", slug="malformed-json", title="Malformed JSON"))
        return respond(request, ApiProblem(422, "the request does not match the API's schema", slug="invalid-request",
                                           title="Invalid request", errors=_validation_errors(errors)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        detail = e.detail if isinstance(e.detail, str) else HTTPStatus(e.status_code).phrase
        return respond(request, ApiProblem(e.status_code, detail, headers=dict(e.headers or {})))
