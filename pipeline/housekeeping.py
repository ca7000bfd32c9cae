"""The command line's housekeeping: ``projects``, ``delete``, ``prune``, ``doctor`` and ``du``.

The work itself is in :mod:`pipeline.runs.retention`, :mod:`pipeline.runs.doctor`,
:mod:`pipeline.runs.usage` and :mod:`pipeline.runs.projects`; here are the options and the printing.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from sqlmodel import Session, func, select

from pipeline import display
from pipeline.config import Settings
from pipeline.errors import InputError
from pipeline.runs import doctor, retention, usage
from pipeline.runs.projects import (
    create_project,
    find_project,
    get_project,
    list_projects,
    run_ids_of,
    spent_by_project,
    write_project_file,
)
from pipeline.store.db import open_database, session, sqlite_path
from pipeline.store.models import Run, row_id

EXIT_OK, EXIT_FAILED = 0, 1


def add_parsers(sub: Any) -> None:
    """The housekeeping sub-commands, on the CLI's sub-parser."""
    projects = sub.add_parser("projects", help="list projects, or add one (`projects add NAME`)")
    projects.add_argument("action", nargs="?", choices=("list", "add"), default="list")
    projects.add_argument("name", nargs="?", help="the new project's name (with add)")
    projects.add_argument("--description", default="")
    projects.add_argument("--budget", type=float, help="spending cap in USD across all the project's runs")
    for option in ("providers", "judge", "refiner", "template", "style"):
        projects.add_argument(f"--default-{option}", help=f"the {option} its new runs take unless told otherwise")
    projects.add_argument("--default-iterations", type=int)
    projects.add_argument("--default-budget", type=float, help="each new run's own cap in USD")

    delete = sub.add_parser("delete", help="delete a run or a project: rows, images, thumbnails, sidecars and exports")
    delete.add_argument("what", choices=("run", "project"))
    delete.add_argument("target", help="the run id, or the project's name")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    prune = sub.add_parser("prune", help="remove images by policy (approved images, and runs in progress, are never touched)")
    prune.add_argument("--older-than", type=float, metavar="DAYS", help="images older than this go unless approved")
    prune.add_argument("--keep-best", action="store_true", help="each prompt keeps only its best iteration (and approved ones)")
    prune.add_argument("--drop-rejected", action="store_true", help="rejected images go")
    prune.add_argument("--project", help="only this project's runs")
    prune.add_argument("--run", type=int, action="append", default=[], help="only this run (repeatable)")
    prune.add_argument("--dry-run", action="store_true", help="list what would go and the space freed; change nothing")

    check = sub.add_parser("doctor", help="check the database and the disk (or bucket) agree (missing, unknown, changed and temporary files)")
    check.add_argument("--repair", action="store_true", help="fix what can be fixed")
    check.add_argument("--no-hashes", action="store_true", help="skip re-reading every image to check its SHA-256 (faster)")

    du = sub.add_parser("du", help="storage per project, run and provider: images, bytes on disk and in the database, growth per day")
    du.add_argument("--project", help="only this project's runs")
    du.add_argument("--json", action="store_true", help="print JSON for scripts")


def _mb(n: float | int | None) -> str:
    return display.size(n)


def _table(rows: list[list[str]], out: TextIO) -> None:
    for line in display.table_lines(rows):
        print(line, file=out)


def cmd_projects(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    with session(engine) as s:
        if args.action == "add":
            if not args.name:
                raise InputError("name the project: python -m pipeline projects add NAME", field="name")
            defaults = {k: getattr(args, f"default_{k}") for k in ("judge", "refiner", "template", "style", "iterations")}
            defaults["providers"] = [p.strip() for p in args.default_providers.split(",") if p.strip()] if args.default_providers else None
            defaults["budget_usd"] = args.default_budget
            project = create_project(s, settings, args.name, description=args.description, defaults=defaults, budget_usd=args.budget)
            s.commit()
            write_project_file(settings, project)
            print(f"Project {project.name!r} created; its runs go to {settings.runs_dir / project.slug}", file=out)
            return EXIT_OK
        rows = [["PROJECT", "RUNS", "SPENT", "CAP", "DEFAULTS", "DESCRIPTION"]]
        for p in list_projects(s):
            runs = s.exec(select(func.count()).select_from(Run).where(Run.project_id == p.id)).one()
            rows.append([p.name, str(runs), f"${spent_by_project(s, row_id(p)):.4f}", f"${p.budget_usd:.2f}" if p.budget_usd else "-",
                         json.dumps(p.defaults, ensure_ascii=False) if p.defaults else "-", p.description])
    _table(rows, out)
    return EXIT_OK


def project_run_defaults(settings: Settings, name: str | None) -> dict[str, Any]:
    """The defaults of an existing project (for ``run --project``); {} for a new or no project.
    Reads an existing database only: a launch refused later leaves nothing behind."""
    path = sqlite_path(settings.database_url)
    if name is None or (path is not None and not path.is_file()):
        return {}
    engine = open_database(settings)
    with session(engine) as s:
        project = find_project(s, name)
        return dict(project.defaults) if project is not None else {}


def apply_project_defaults(args: argparse.Namespace, settings: Settings) -> None:
    """``run --project NAME``: an option left at Darkroom's own default takes the project's default instead."""
    defaults = project_run_defaults(settings, args.project)
    run = settings.run
    if "providers" in defaults and args.providers == ",".join(run.providers):
        args.providers = ",".join(defaults["providers"])
    for option, builtin in (("judge", run.judge), ("refiner", run.refiner), ("iterations", run.iterations)):
        if option in defaults and getattr(args, option) == builtin:
            setattr(args, option, defaults[option])
    if "budget_usd" in defaults and args.budget is None:
        args.budget = float(defaults["budget_usd"])


def _confirm(prompt: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise InputError("is needed to confirm when not in a terminal (no question can be asked); nothing was deleted", field="yes")
    return input(f"{prompt} Type yes to go on: ").strip().lower() == "yes"


def cmd_delete(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    if args.what == "run":
        if not args.target.isdigit():
            raise InputError(f"{args.target!r} is not a run id", field="target")
        plan = retention.plan_run_delete(engine, settings, int(args.target))
        if not _confirm(f"Delete run {args.target}: {plan.describe()}.", args.yes):
            print("Nothing was deleted.", file=out)
            return EXIT_OK
        gone = retention.delete_run(engine, settings, int(args.target))
    else:
        plan = retention.plan_project_delete(engine, settings, args.target)
        if not _confirm(f"Delete project {args.target!r}: {plan.describe()}.", args.yes):
            print("Nothing was deleted.", file=out)
            return EXIT_OK
        gone = retention.delete_project(engine, settings, args.target)
    print(f"Deleted {args.what} {args.target}: {gone.describe()}", file=out)
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    policy = retention.PrunePolicy(older_than_days=args.older_than, keep_best=args.keep_best, drop_rejected=args.drop_rejected,
                                   project=args.project, run_ids=tuple(args.run))
    policy.check()
    engine = open_database(settings)
    result = retention.prune(engine, settings, policy, dry_run=args.dry_run)
    if result.finished_journal:
        print(f"Finished an interrupted prune of {result.finished_journal} image(s) first.", file=out)
    if args.dry_run:
        for d in result.images:
            print(f"would remove  run {d.run_id}  {d.prompt_key}  iteration {d.number}  {_mb(d.image_bytes)}  ({d.why})  {d.path}", file=out)
    verb = "Would free" if args.dry_run else "Freed"
    place = "in the bucket" if settings.storage_url else "on disk"
    print(f"{verb} {_mb(result.image_bytes)} {place} and {_mb(result.thumbnail_bytes)} of thumbnails in the database: "
          f"{len(result.images):,} image(s) ({policy.describe()}).", file=out)
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    findings = doctor.examine(engine, settings, hashes=not args.no_hashes)
    if not findings:
        if settings.storage_url:
            print(f"Clean: every image a row names is in {settings.storage_url} with its recorded SHA-256, "
                  "no object there is unknown, no temporary file is left.", file=out)
        else:
            print("Clean: every image a row names is on disk with its recorded SHA-256, no file is unknown, no temporary file is left.",
                  file=out)
        return EXIT_OK
    for f in findings:
        print(f"{f.kind:<10}  {f.path}  {f.detail}", file=out)
    if not args.repair:
        fixable = sum(f.repairable for f in findings)
        print(f"{len(findings)} problem(s); {fixable} can be repaired with: python -m pipeline doctor --repair", file=out)
        return EXIT_FAILED
    for line in doctor.repair(engine, settings, findings):
        print(f"repaired    {line}", file=out)
    left = doctor.examine(engine, settings, hashes=not args.no_hashes)
    print(f"{len(left)} problem(s) left" + (" (cannot be repaired automatically)" if left else ""), file=out)
    return EXIT_FAILED if left else EXIT_OK


def cmd_du(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    report = usage.storage_report(engine, settings, project=args.project)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1), file=out)
        return EXIT_OK
    print(f"Database: {_mb(report.database_bytes)}", file=out)
    for title, rows in (("PROJECT", report.projects), ("RUN", report.runs), ("PROVIDER", report.providers)):
        if not rows:
            continue
        table = [[title, "IMAGES", "ON DISK", "IN DATABASE", "PER DAY"]]
        table += [[u.name, f"{u.images:,}", _mb(u.disk_bytes), _mb(u.db_bytes), _mb(u.bytes_per_day)] for u in rows]
        print(file=out)
        _table(table, out)
    t = report.total
    print(f"\nTotal: {t.images:,} image(s), {_mb(t.disk_bytes)} on disk, {_mb(t.db_bytes)} in the database, "
          f"growing {_mb(t.bytes_per_day)} a day (last {usage.GROWTH_DAYS} days)", file=out)
    return EXIT_OK


COMMANDS = {"projects": cmd_projects, "delete": cmd_delete, "prune": cmd_prune, "doctor": cmd_doctor, "du": cmd_du}


def export_run_ids(s: Session, run_id: int | None, project: str | None) -> list[int]:
    """``export RUN`` or ``export --project NAME``: the runs the zip covers."""
    if (run_id is None) == (project is None):
        raise InputError("give a run id or --project NAME (one of them)", field="project")
    if run_id is not None:
        return [run_id]
    assert project is not None
    get_project(s, project)  # a clear message for an unknown name
    ids = run_ids_of(s, project)
    if not ids:
        raise InputError(f"project {project!r} has no runs yet", field="project")
    return ids
