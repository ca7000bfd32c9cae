"""The benchmarks run on a fresh clone: everything they read ships inside the repository."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import PYTHON, ROOT

BENCH = ROOT / "bench"
PARTI_SHA256 = "fab29e41bb512a169b56acab4cf2a41dcb675e285df2efcde6640c7dd3c440eb"  # google-research/parti, as shipped


def test_no_benchmark_reads_outside_the_repository() -> None:
    outside = re.compile(r"ROOT\.parent|\.\./|/shared/|\"shared\"")
    for script in sorted(BENCH.glob("*.py")):
        hits = [line.strip() for line in script.read_text(encoding="utf-8").splitlines() if outside.search(line)]
        assert hits == [], f"{script.name} reads outside the repository: {hits}"


def test_the_shipped_partiprompts_file_is_the_original_with_its_licence_noted() -> None:
    tsv = BENCH / "data" / "PartiPrompts.tsv"
    assert hashlib.sha256(tsv.read_bytes()).hexdigest() == PARTI_SHA256
    note = (BENCH / "data" / "README.md").read_text(encoding="utf-8")
    assert "Apache License 2.0" in note and "google-research/parti" in note and PARTI_SHA256 in note
    sys.path.insert(0, str(BENCH))
    try:
        from parti import parti_prompts, parti_rows
    finally:
        sys.path.remove(str(BENCH))
    rows = parti_rows()
    assert len(rows) == 1632 and set(rows[0]) == {"Prompt", "Category", "Challenge", "Note"}
    assert any(r["Prompt"].startswith('"G I G G L E"') for r in rows)  # kept byte for byte (no quote stripping)
    items = parti_prompts(2000)
    assert len(items) == 2000 and len({i["id"] for i in items}) == 2000 and len({i["prompt"] for i in items}) == 2000


def test_a_benchmark_runs_from_a_copy_with_nothing_beside_it(tmp_path: Path) -> None:
    """A fresh clone: the repository's code and bench/ alone, no ../shared folder next to it."""
    clone = tmp_path / "clone" / "darkroom"
    for part in ("pipeline", "bench", "data/samples"):  # what git tracks (data/ holds only samples/ and a README)
        shutil.copytree(ROOT / part, clone / part, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (clone.parent / "shared").exists()
    done = subprocess.run([PYTHON, "bench/pipeline_overhead.py", "--prompts", "2", "--overhead-prompts", "2"], cwd=clone,
                          capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "BENCH_TMP": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "end to end, offline stack, 2 prompts x 2 iterations" in done.stdout
