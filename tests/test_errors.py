"""The error tree: every exception the pipeline raises lives in pipeline/errors.py and in its docstring."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pipeline import errors
from pipeline.errors import ChainFailed, ContentBlocked, InputError, ProviderError, Skip
from pipeline.services import wire

ROOT = Path(__file__).resolve().parent.parent


def test_every_exception_in_errors_py_is_in_its_docstring_tree() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, BaseException) and c.__module__ == errors.__name__]
    assert len(classes) >= 14
    tree = errors.__doc__ or ""
    assert [c.__name__ for c in classes if f" {c.__name__} " not in tree] == []


# The REST API's answer to any error (RFC 9457 problem details): a Starlette HTTPException that the
# API's handlers turn into a response. Not an error of the pipeline: those are all in errors.py, and
# pipeline/api/problems.py maps each of them to one of these.
HTTP_ANSWERS = {"pipeline/api/problems.py: ApiProblem(HTTPException)"}


def test_no_module_but_errors_py_defines_a_public_exception() -> None:
    outside = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Blocked", "Failed", "Reached", "Stopped")) for b in bases):
                    outside.append(f"{path.relative_to(ROOT)}: {node.name}({', '.join(bases)})")
    assert [o for o in outside if o not in HTTP_ANSWERS] == [], "move these into pipeline/errors.py (and its docstring tree)"


def test_skipped_is_a_declared_field() -> None:
    assert ProviderError("x").skipped == [] and ContentBlocked("x").skipped == []
    failed = ChainFailed("provider", [Skip("fal", "circuit breaker open"), Skip("worker", "auth: bad key")], None)
    assert failed.kind == "unavailable" and [s.service for s in failed.skipped] == ["fal", "worker"]
    assert str(failed) == "no provider could serve the request (fal: circuit breaker open; worker: auth: bad key)"


def test_an_input_error_names_its_field_for_each_front_end_to_word() -> None:
    e = InputError("6 is outside 1–5", field="iterations")
    assert (e.field, e.detail, str(e)) == ("iterations", "6 is outside 1–5", "iterations: 6 is outside 1–5")
    assert e.worded("--iterations") == "--iterations: 6 is outside 1–5"
    assert e.worded("Iterations per prompt") == "Iterations per prompt: 6 is outside 1–5"
    assert InputError("no such run").worded("--x") == "no such run"


@pytest.mark.parametrize(("body", "text"), [
    ({"error": {"message": "Invalid size", "type": "invalid_request_error", "code": None}}, "Invalid size (invalid_request_error)"),
    ({"error": {"message": "moderated", "code": "moderation_blocked"}}, "moderated (moderation_blocked)"),
    ({"error": "model 'x' not found"}, "model 'x' not found"),
    ({"detail": "Not authenticated"}, "Not authenticated"),
    ({"detail": [{"msg": "content flagged", "type": "content_policy_violation"}, {"msg": "second"}]},
     "content flagged (content_policy_violation); second"),
    ({"errors": [{"code": 3036, "message": "daily limit"}], "success": False}, "daily limit (3036)"),
    ({"message": "Internal error"}, "Internal error"),
    ({"error": True, "message": "flag and text"}, "flag and text"),
    ({"result": None}, ""),
    (["not", "a", "dict"], ""),
    (None, ""),
])
def test_one_reader_of_error_bodies_knows_every_shape(body: object, text: str) -> None:
    assert wire.error_text(body) == text


def test_one_status_table_for_every_service() -> None:
    assert [wire.kind_for_status(c) for c in (400, 401, 403, 404, 408, 409, 413, 422, 429, 418, 500, 503)] == [
        "bad_request", "auth", "auth", "not_found", "timeout", "conflict", "bad_request", "bad_request", "rate_limited",
        "bad_request", "server", "server"]
    for vendor in ("openai", "gemini", "fal", "cloudflare", "leonardo", "runware", "comfyui", "worker", "ollama"):
        source = (ROOT / "pipeline" / "services" / f"{vendor}.py").read_text(encoding="utf-8")
        assert "429:" not in source and ">= 500 else" not in source, f"{vendor} keeps its own status table"
