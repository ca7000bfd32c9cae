"""Figures of pipeline/'s import graph: modules, import edges between them, cycles, PromptJob's size.

    python tools/import_graph.py            # the work tree
    python tools/import_graph.py e61897f    # any commit (read with `git archive`, nothing checked out)

An edge is one module importing another pipeline module (function-level and TYPE_CHECKING imports
included; a package counts as its ``__init__``). A cycle is a strongly connected group of modules;
"pairs" counts modules that import each other directly. Built on grimp, which import-linter uses.
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _tree(rev: str | None, into: Path) -> Path:
    """A directory holding pipeline/ as it is at ``rev`` (the work tree when None)."""
    if rev is None:
        return ROOT
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "pipeline"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(group)
    return groups


def _prompt_job(root: Path) -> str:
    for path in sorted((root / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name == "PromptJob" and node.end_lineno is not None:
                methods = sum(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in node.body)
                return f"{node.end_lineno - node.lineno + 1} lines, {methods} methods ({path.relative_to(root)})"
    return "not found"


def figures(rev: str | None) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        root = _tree(rev, Path(tmp))
        sys.path.insert(0, str(root))
        try:
            graph = grimp.build_graph("pipeline", cache_dir=None)
        finally:
            sys.path.remove(str(root))
            sys.modules.pop("pipeline", None)
        modules = sorted(graph.modules)
        edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in graph.modules} for m in modules}
        cycles = _cycles(edges)
        return {
            "modules": len(modules),
            "files at the root of pipeline/": sum(m.count(".") == 1 and not graph.find_children(m) for m in modules),
            "import edges": sum(len(targets) for targets in edges.values()),
            "cycles (groups)": len(cycles),
            "modules in a cycle": sum(len(g) for g in cycles),
            "pairs importing each other": sum(1 for a in edges for b in edges[a] if a < b and a in edges[b]),
            "cycle groups": "; ".join(" ↔ ".join(sorted(m.removeprefix("pipeline.") for m in g)) for g in cycles) or "-",
            "PromptJob": _prompt_job(root),
        }


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    for name, value in figures(rev).items():
        print(f"{name:>34}: {value}")


if __name__ == "__main__":
    main()
