"""The one import rule import-linter cannot check: what the UI may import.

import-linter (contracts in pyproject.toml) needs importable packages; ``app.py`` is a script and
``pages/`` is not a package, so their imports are read here with ``ast``. Pages talk to services
only through ``pipeline/`` (``pipeline.services.catalog``), never through an SDK or HTTP client.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI_FILES = sorted([ROOT / "app.py", *(ROOT / "pages").rglob("*.py")])
VENDORS = ("fal", "cloudflare", "worker", "leonardo", "runware", "comfyui", "gemini", "openai", "ollama", "offline")
# A module and everything under it.
FORBIDDEN_IN_UI = (
    "openai",
    "google.genai",
    "httpx",
    "pipeline.services.wire",
    "pipeline.services.remote",
    *(f"pipeline.services.{vendor}" for vendor in VENDORS),
)


def imported_modules(source: str) -> Iterator[tuple[int, str]]:
    """(line, module) for every absolute import, including ``from a import b`` as ``a.b`` and
    ``importlib.import_module("x")``, anywhere in the file (functions included)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            if name in ("import_module", "__import__"):
                yield node.lineno, node.args[0].value


def forbidden(module: str) -> str | None:
    return next((f for f in FORBIDDEN_IN_UI if module == f or module.startswith(f + ".")), None)


def test_the_ui_never_imports_a_vendor_sdk_httpx_or_a_vendor_module() -> None:
    assert len(UI_FILES) > 1, "pages/**/*.py not found"
    broken = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in UI_FILES
        for line, module in imported_modules(path.read_text(encoding="utf-8"))
        if forbidden(module)
    ]
    assert not broken, "the UI goes through pipeline/ (services.catalog), never a service itself:\n" + "\n".join(broken)


def test_every_form_of_import_is_seen() -> None:
    source = (
        "import httpx as h\n"
        "from google import genai\n"
        "def f():\n"
        "    from openai.types import Image\n"
        "    importlib.import_module('pipeline.services.fal')\n"
        "from pipeline.services.catalog import catalog\n"
        "from . import sibling\n"
    )
    found = sorted((line, module) for line, module in imported_modules(source) if forbidden(module))
    assert found == [(1, "httpx"), (2, "google.genai"), (4, "openai.types"), (4, "openai.types.Image"), (5, "pipeline.services.fal")]
