"""The PartiPrompts prompts the benchmarks run on, read from the copy shipped in ``bench/data/``.

The file lives inside the repository (Apache-2.0, source and licence in ``bench/data/README.md``)
so every benchmark runs on a fresh clone; a missing file is named, never silently replaced.
"""

from __future__ import annotations

import csv
from pathlib import Path

PARTI = Path(__file__).resolve().parent / "data" / "PartiPrompts.tsv"


def parti_rows(path: Path = PARTI) -> list[dict[str, str]]:
    """Every row of the TSV, byte for byte (no quoting: one prompt starts with a double quote)."""
    try:
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: it ships with the repository (see bench/data/README.md)") from None


def parti_prompts(n: int) -> list[dict]:
    """``n`` prompts spread evenly over the file, as prompt-set entries (cycled, numbered, when n > 1,632)."""
    rows = parti_rows()
    step = max(1, len(rows) // n)
    picked = rows[::step][:n]
    items = []
    for i in range(n):
        r = picked[i % len(picked)]
        text = r["Prompt"] if i < len(picked) else f"{r['Prompt']} ({i})"
        items.append({"id": f"p{i:04d}", "title": r["Category"], "prompt": text, "tags": [r["Challenge"]]})
    return items
