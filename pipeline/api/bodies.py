"""Request bodies read by hand (where a route takes JSON or multipart): the same errors as FastAPI's own parsing."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from pipeline.api.problems import ApiProblem


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):
        raise ApiProblem(400, "the request body is not valid JSON", slug="malformed-json", title="Malformed JSON") from None


def validated(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_json(request: Request) -> None:
    kind = media_type(request)
    if kind not in ("application/json", ""):
        raise ApiProblem(415, f"send application/json, not {kind}", slug="unsupported-media-type")
