"""The FastAPI application: ``create_app`` wires the routes, errors, limits and the runner.

One more door onto the pipeline, not a second system: the same database, the same functions
as the dashboard and the CLI (:mod:`pipeline.runs.control`, :mod:`pipeline.review`), and the
dashboard's background runner executing the runs it queues.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from pipeline import __version__
from pipeline.api import problems
from pipeline.api.context import ApiContext
from pipeline.api.middleware import Edge
from pipeline.api.routes import events, exports, generate, health, images, metrics, prompts, providers, runs, tokens
from pipeline.api.schemas import CreateRun, CreateRunUpload, Generate
from pipeline.api.settings import ApiSettings
from pipeline.config import Settings
from pipeline.runs.background import BackgroundRunner

DESCRIPTION = """Darkroom's REST API: the same runs, images and reviews as the dashboard and the CLI.

Every route except `/health` and `/ready` needs `Authorization: Bearer <token>`; make one with
`python -m pipeline token create --name NAME --role reviewer|operator|admin`. Errors are
RFC 9457 problem details (`application/problem+json`)."""
PROBLEM_SCHEMA = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"}, "field": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object", "properties": {
                       "path": {"type": "string"}, "message": {"type": "string"}}}}},
}
COMMON_PROBLEMS = {"400": "malformed request", "401": "no token, or an unknown or revoked one", "403": "the token's role may not do this",
                   "404": "not found", "409": "not possible in the current state", "413": "request too large",
                   "415": "unsupported media type", "422": "invalid input", "429": "too many requests", "500": "internal error",
                   "503": "storage unavailable", "507": "disk full"}
EXTRA_SCHEMAS: list[type[BaseModel]] = [CreateRun, CreateRunUpload, Generate]


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema, plus the bodies read by hand (JSON or multipart) and the problem responses every route may give."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in EXTRA_SCHEMAS:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(found.pop("$defs", {}))
        components[model.__name__] = found
    components["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's own validation shape: ours is a problem
            for code, why in COMMON_PROBLEMS.items():
                if path in ("/health", "/ready") and code in ("401", "403", "429"):
                    continue
                responses.setdefault(code, {"description": why, "content": problem})
    app.openapi_schema = schema
    return schema


def create_app(settings: Settings, engine: Engine, *, runner: BackgroundRunner | None = None, api: ApiSettings | None = None) -> FastAPI:
    """The app. With ``runner``, it is started with the app and stopped with it (``serve`` does this)."""
    ctx = ApiContext(settings=settings, api=api or ApiSettings.from_settings(settings), engine=engine, runner=runner)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start(log_to_file=False)
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()

    app = FastAPI(title="Darkroom", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.ctx = ctx
    problems.install(app)
    for module in (health, runs, events, exports, generate, prompts, providers, images, tokens, metrics):
        app.include_router(module.router)
    app.add_middleware(Edge, limits=lambda: (ctx.api.max_body_bytes, settings.promptset.bundle_max_bytes), metrics=lambda: ctx.metrics)
    if ctx.api.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(ctx.api.cors_origins), allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Idempotency-Key"], expose_headers=["Location", "ETag"])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
