"""Check the database file without changing it: ``python -m pipeline.store.check [FILE]``.

Runs SQLite's integrity check on the configured database (``DARKROOM_DATA_DIR`` /
``DARKROOM_DATABASE_URL``) or on FILE, read-only, and prints what it finds. Exit codes: 0 the
file is whole, 1 it is damaged, 2 there is no such SQLite file. This is the first step the
"database is damaged" message names.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

from pipeline.config import Settings
from pipeline.store.db import header_problem, sqlite_path

MAX_PROBLEMS = 20  # SQLite stops listing after this many


def integrity_problems(path: Path) -> list[str]:
    """What is wrong with the file (an empty list when it is whole), opened read-only."""
    problem = header_problem(path)
    if problem:
        return [problem]
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = con.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return [f"SQLite reports \"{e}\""]
    found = [str(r[0]) for r in rows]
    return [] if found == ["ok"] else found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = Settings.from_env()
    path = Path(args[0]) if args else sqlite_path(settings.database_url)
    if path is None or not path.is_file():
        print(f"error: no SQLite database file at {path or settings.database_url}", file=sys.stderr)
        return 2
    problems = integrity_problems(path)
    if not problems:
        print(f"{path}: whole (SQLite's integrity check found nothing wrong)")
        return 0
    print(f"{path}: damaged. SQLite's integrity check found:")
    for line in problems:
        print(f"  {line}")
    print("To recover: restore your backup copy of the file (delete its -wal and -shm files first), or move it aside so\n"
          "Darkroom starts a new, empty one. With the sqlite3 tool you may also salvage what is readable:\n"
          f"  sqlite3 {path} .recover | sqlite3 recovered.db\n"
          f"Images and their JSON sidecars are files, not in the database: {settings.runs_dir}/<run id>/results/")
    return 1


if __name__ == "__main__":
    sys.exit(main())
