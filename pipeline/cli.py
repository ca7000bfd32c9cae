"""Command line: ``python -m pipeline run|resume|status|export|check`` (``--version``; ``status --json``; ``check --json``).

Exit codes: 0 every prompt completed; 1 finished with failed or blocked prompts (or the
command failed); 2 invalid input or usage, with nothing written; 130 interrupted (resumable).
Launch, resume and the run counts go through :mod:`pipeline.runs.control`, the path the
dashboard uses too.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import TextIO

from pipeline import __version__, housekeeping, registry
from pipeline.api import commands as api_commands
from pipeline.config import Settings
from pipeline.display import stop_reason, table_lines
from pipeline.envfile import load_env_file
from pipeline.errors import ConfigError, DarkroomError, InputError, PromptSetInvalid, RunStateError, UsageError
from pipeline.files import is_disk_full_pause, storage_error
from pipeline.logs import LogFiles, setup_logging
from pipeline.prompts.bundle import BundleLimits, load_source
from pipeline.prompts.promptset import Limits, load_file
from pipeline.review.bucket_export import export_to_bucket
from pipeline.review.export import build_zip
from pipeline.runs import control, variations
from pipeline.runs import worker as worker_command
from pipeline.runs.progress import LogLines, TerminalBar
from pipeline.runs.prompt_check import analyse_prompts, check_prompt_set, option_problems
from pipeline.runs.records import RunConfig, RunSummary, get_run, item_states, output_dir_of, recover_orphans, run_summaries, run_summary
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import open_database, session
from pipeline.store.objects import run_store

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("pipeline.cli")
# How a run's outcome reads in its closing line (RunSummary.outcome; others read as they are).
OUTCOME_WORDS = {"partial": "completed with failed or blocked prompts", "failed": "failed (no prompt completed)",
                 "blocked": "blocked (every prompt was refused)"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def flag(field: str) -> str:
    """An input's name as its command-line option (``target_score`` -> ``--target-score``)."""
    return "--" + field.replace("_", "-")


def _version_action(out: TextIO) -> type[argparse.Action]:
    class Version(argparse.Action):
        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            print(f"darkroom {__version__}", file=out)
            parser.exit(0)

    return Version


def build_parser(settings: Settings, out: TextIO | None = None) -> argparse.ArgumentParser:
    run_defaults = settings.run
    parser = _Parser(prog="python -m pipeline", description="Darkroom: generate, judge, refine and regenerate images in bulk.")
    parser.add_argument("--version", nargs=0, action=_version_action(out or sys.stdout), help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a prompt set through the pipeline")
    run.add_argument("prompt_set", type=Path, help="prompt set: a JSON file (images it names beside it), a zip bundle, or a folder")
    run.add_argument("--output", type=Path, help="folder for results/ (default: <data dir>/runs/<run id>)")
    run.add_argument("--providers", default=",".join(run_defaults.providers),
                     help="ordered provider chain, comma-separated (default: %(default)s)")
    run.add_argument("--judge", default=run_defaults.judge,
                     help="judge, or an ordered chain of judges, comma-separated (default: %(default)s)")
    run.add_argument("--refiner", default=run_defaults.refiner,
                     help="refiner, or an ordered chain of refiners, comma-separated (default: %(default)s)")
    run.add_argument("--routing", choices=("fallback", "pool"), default=run_defaults.routing,
                     help="fallback: providers in chain order; pool: spread over the healthy ones (default: %(default)s)")
    run.add_argument("--block-rewrites", type=int, default=run_defaults.block_rewrites,
                     help="times the refiner may rewrite a blocked prompt to comply, 0–3 (default: %(default)s)")
    run.add_argument("--budget", type=float, help="spending cap in USD; the run pauses before a call would pass it")
    run.add_argument("--iterations", type=int, default=run_defaults.iterations,
                     help="generate+judge rounds per prompt, 1–5 (default: %(default)s)")
    run.add_argument("--target-score", type=float, help="stop refining a prompt once its score reaches this (0–10)")
    run.add_argument("--concurrency", type=int, default=run_defaults.concurrency,
                     help="prompts worked on at once (default: %(default)s)")
    run.add_argument("--name", default="", help="a name for the run (default: the prompt set's name)")
    run.add_argument("--grid", action="store_true",
                     help="ask for 2x2 grids and split each into four images (a prompt's \"grid\" field overrides it)")
    run.add_argument("--enhance", action="store_true",
                     help="rewrite each prompt before its first image (composition, lighting, style, detail); "
                          "a prompt with \"enhance\": false is left as it is")

    check = sub.add_parser("check", help="analyse a prompt set before a run: length against each provider's window, "
                                         "complexity, readability, keywords, critical elements, flags with fixes")
    check.add_argument("prompt_set", type=Path, help="prompt-set JSON file")
    check.add_argument("--providers", default=",".join(run_defaults.providers),
                       help="providers whose windows to check against, comma-separated (default: %(default)s)")
    check.add_argument("--json", action="store_true", help="print JSON for scripts instead of text")
    run.add_argument("--project", help="the project the run belongs to, created when new; its defaults fill options not given")

    resume = sub.add_parser("resume", help="continue an interrupted run without redoing finished steps")
    resume.add_argument("run_id", type=int)
    resume.add_argument("--concurrency", type=int, help="change the number of workers")
    resume.add_argument("--retry-failed", action="store_true", help="also retry prompts that failed or were blocked")
    resume.add_argument("--budget", type=float, help="a new spending cap in USD (a paused run needs a higher one)")

    status = sub.add_parser("status", help="list runs, or one run's prompts")
    status.add_argument("run_id", type=int, nargs="?")
    status.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")

    export = sub.add_parser("export", help="write a zip of a run's (or a whole project's) images and a manifest")
    export.add_argument("run_id", type=int, nargs="?", help="the run (or give --project)")
    export.add_argument("--project", help="every run of this project")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, help="the zip file to write")
    target.add_argument("--to", metavar="s3://BUCKET/PREFIX", help="upload the images and the manifest to this bucket prefix instead "
                        "(endpoint, region and keys from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")
    chosen = export.add_mutually_exclusive_group()
    chosen.add_argument("--approved-only", action="store_const", dest="selection", const="approved",
                        help="only images whose latest decision is approved")
    chosen.add_argument("--best", action="store_const", dest="selection", const="best", help="each prompt's best-scoring iteration")
    export.set_defaults(selection="all")
    housekeeping.add_parsers(sub)
    api_commands.add_parsers(sub, settings)
    worker_command.add_parser(sub)
    variations.add_parser(sub)
    return parser


def _names(value: str, field: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise InputError("name at least one", field=field)
    return names


def _console_level() -> int:
    return logging.WARNING if sys.stderr.isatty() else logging.INFO


async def _execute(executor: RunExecutor) -> RunSummary:
    """Run it with Ctrl-C / SIGTERM wired to the executor: the first stops taking new work (calls
    in flight get the grace period), the second cancels them at once, a third ends the process."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            executor.request_stop()
            return
        executor.abort()
        for sig in signals:  # from now on an interrupt is Python's own KeyboardInterrupt
            loop.remove_signal_handler(sig)

    for sig in signals:
        loop.add_signal_handler(sig, on_interrupt)
    try:
        return await executor.execute()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _run_executor(engine, settings: Settings, run_id: int, out: TextIO) -> int:  # type: ignore[no-untyped-def]
    reporter = TerminalBar() if sys.stderr.isatty() else LogLines()
    executor = RunExecutor(engine, settings, run_id, on_progress=reporter)
    try:
        outcome = asyncio.run(_execute(executor))
    finally:
        reporter.close()
    with session(engine) as s:
        run_row = get_run(s, run_id)
        folder = run_store(settings, run_row, output_dir_of(settings, run_row)).where("results")  # a folder, or s3://…
    o = outcome
    print(f"Run {o.id} {OUTCOME_WORDS.get(o.outcome, o.outcome)}: {o.completed} completed, {o.failed} failed, "
          f"{o.blocked} blocked of {o.total} prompts; ${o.cost_usd:.4f}; {o.elapsed_s or 0.0:.1f}s", file=out)
    print(f"Results: {folder}", file=out)
    if o.status == "interrupted":
        print(f"{o.unfinished} prompt(s) left. Continue with: python -m pipeline resume {o.id}", file=out)
        return EXIT_INTERRUPTED
    if o.status == "paused":
        more = "" if is_disk_full_pause(o.error) else " --budget <more USD>"  # a full disk needs space, not money
        print(f"Paused: {o.error}\n{o.unfinished} prompt(s) left. Continue with: "
              f"python -m pipeline resume {o.id}{more}", file=out)
        return EXIT_INTERRUPTED
    if o.status == "failed" and o.error:
        print(f"Error: {o.error}", file=out)
    if o.outcome in ("partial", "failed", "blocked"):
        print(f"Why each prompt failed: python -m pipeline status {o.id}; retry them with: "
              f"python -m pipeline resume {o.id} --retry-failed", file=out)
    return EXIT_OK if o.outcome == "completed" else EXIT_FAILED


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    housekeeping.apply_project_defaults(args, settings)
    judges, refiners = _names(args.judge, "judge"), _names(args.refiner, "refiner")
    config = RunConfig(
        providers=_names(args.providers, "providers"), judge=judges[0], refiner=refiners[0],
        judge_fallbacks=judges[1:], refiner_fallbacks=refiners[1:], iterations=args.iterations, target_score=args.target_score,
        concurrency=args.concurrency, routing=args.routing, block_rewrites=args.block_rewrites, budget_usd=args.budget,
        enhance=args.enhance, grid=args.grid,
    )
    config.validate(settings)
    control.check_components(config)
    spec = load_source(args.prompt_set, Limits.from_settings(settings), BundleLimits.from_settings(settings))
    for analysis in check_prompt_set(settings, spec, config.providers):  # over a hard maximum: refused here, exit 2
        if analysis.compress_for:
            log.info("%s: over the window of %s; it will be compressed for them", analysis.path, ", ".join(analysis.compress_for))
    output_dir = args.output.resolve() if args.output else None
    control.check_launch(settings, config, output_dir, spec)
    # Inputs are valid: from here on things are written.
    log_path = setup_logging(LogFiles.from_settings(settings), console_level=_console_level())
    engine = open_database(settings)
    run_id = control.launch(engine, settings, spec, config, output_dir=output_dir, name=args.name, claim=True, project=args.project)
    log.info("run %s created from %s (%d prompts); log file %s", run_id, args.prompt_set, len(spec.prompts), log_path)
    return _run_executor(engine, settings, run_id, out)


def cmd_variations(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    run_id = variations.launch_variations(engine, settings, args.image_id, n=args.n, instruction=args.instruction, claim=True)
    setup_logging(LogFiles.from_settings(settings), console_level=_console_level())
    print(f"Run {run_id}: {args.n} variation(s) of image {args.image_id}", file=out)
    return _run_executor(engine, settings, run_id, out)


def cmd_resume(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.budget is not None and args.budget <= 0:
        raise InputError(f"{args.budget} must be more than 0", field="budget")
    control.check_data_dir(settings)
    setup_logging(LogFiles.from_settings(settings), console_level=_console_level())
    engine = open_database(settings)
    control.resume(engine, settings, args.run_id, retry_failed=args.retry_failed, budget_usd=args.budget,
                   concurrency=args.concurrency, claim=True)
    log.info("resuming run %s", args.run_id)
    return _run_executor(engine, settings, args.run_id, out)


def _table(rows: list[list[str]], out: TextIO) -> None:
    for line in table_lines(rows):
        print(line, file=out)


def cmd_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    with session(engine) as s:
        recover_orphans(s)
        s.commit()
        if args.run_id is None:
            runs = run_summaries(s)
            if args.json:
                print(json.dumps([r.as_dict() for r in runs], ensure_ascii=False, indent=1), file=out)
                return EXIT_OK
            if not runs:
                print("No runs yet. Start one with: python -m pipeline run data/samples/seed.json", file=out)
                return EXIT_OK
            rows = [["RUN", "STATUS", "DONE", "FAILED", "BLOCKED", "TOTAL", "COST", "PROVIDERS", "NAME", "CREATED"]]
            for r in runs:
                rows.append([str(r.id), r.outcome, str(r.completed), str(r.failed), str(r.blocked), str(r.total),
                             f"${r.cost_usd:.4f}", ",".join(r.config.get("providers", [])), r.name, f"{r.created_at:%Y-%m-%d %H:%M}"])
            _table(rows, out)
            return EXIT_OK
        run = run_summary(s, args.run_id)
        folder = output_dir_of(settings, get_run(s, run.id))
        items = item_states(s, run.id)
    if args.json:
        prompts = [{"prompt_id": st.prompt_key, **{k: v for k, v in dataclasses.asdict(st).items() if k != "prompt_key"}}
                   for st in items]
        print(json.dumps({"run": run.as_dict(), "output_dir": str(folder), "prompts": prompts}, ensure_ascii=False, indent=1), file=out)
        return EXIT_OK
    print(f"Run {run.id} ({run.name}): {OUTCOME_WORDS.get(run.outcome, run.outcome)}; {run.completed} completed, {run.failed} failed, "
          f"{run.blocked} blocked of {run.total}; ${run.cost_usd:.4f}", file=out)
    print(f"Output: {folder}", file=out)
    if run.error:
        print(f"Error: {run.error}", file=out)
    rows = [["PROMPT", "STATUS", "ITERATIONS", "BEST", "SCORE", "COST", "STOPPED", "ERROR"]]
    for st in items:
        rows.append([st.prompt_key, st.status, str(st.iterations), str(st.final_iteration or "-"),
                     f"{st.best_score:.2f}" if st.best_score is not None else "-", f"${st.cost_usd:.4f}", st.stop_reason or "-", st.error])
    _table(rows, out)
    for reason in sorted({st.stop_reason for st in items if st.stop_reason}):
        print(f"STOPPED {reason}: {stop_reason(reason)}", file=out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.to:
        with session(open_database(settings)) as s:
            sent = export_to_bucket(s, settings, housekeeping.export_run_ids(s, args.run_id, args.project), args.to,
                                    selection=args.selection)
        print(f"Uploaded to {sent.url}/: {sent.images} image(s) and manifest.csv/manifest.json, {sent.bytes_sent:,} bytes", file=out)
        return EXIT_OK
    control.check_file_target(args.out.resolve(), "out")
    engine = open_database(settings)
    with session(engine) as s:
        result = build_zip(s, settings, housekeeping.export_run_ids(s, args.run_id, args.project), args.out, selection=args.selection)
    print(f"Wrote {result.path}: {result.images} image(s), {result.bytes_written:,} bytes", file=out)
    return EXIT_OK


def _bar(share: float, width: int = 20) -> str:
    filled = min(width, round(min(share, 1.0) * width))
    return "[" + "#" * filled + "." * (width - filled) + "]" + (" OVER" if share > 1 else "")


def cmd_check(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Exit 2 when a prompt would be refused (over a provider's hard maximum), else 0 (warnings printed)."""
    providers = _names(args.providers, "providers")
    spec = load_file(args.prompt_set, Limits.from_settings(settings))
    option_errors = option_problems(spec)
    if option_errors:
        raise PromptSetInvalid(option_errors, spec.source)
    analyses = analyse_prompts(settings, spec, providers)
    flags = [f for a in analyses for f in a.flags]
    n_errors = sum(f.level == "error" for f in flags)
    if args.json:
        print(json.dumps({"source": spec.source, "prompts": [a.as_dict() for a in analyses], "errors": n_errors,
                          "warnings": len(flags) - n_errors}, ensure_ascii=False), file=out)
        return EXIT_USAGE if n_errors else EXIT_OK
    for a in analyses:
        print(f"{a.prompt_id} ({a.path}): {len(a.text):,} characters", file=out)
        for f in a.fits:
            state = "over the maximum" if f.over_max else ("compressed for it" if f.over_window else "fits")
            print(f"  {f.window.provider:<11} {_bar(f.share)} {f.describe()}: {state}", file=out)
        counts = f", counts: {', '.join(a.counts)}" if a.counts else ""
        print(f"  complexity: {len(a.elements)} elements, {a.relations} relations{counts}", file=out)
        readability = f"{a.readability} (Flesch reading ease; higher is easier)" if a.readability is not None else "n/a (not English)"
        print(f"  readability: {readability}", file=out)
        print(f"  keywords: {', '.join(a.keywords) or '-'}", file=out)
        print(f"  critical elements: {'; '.join(e.label for e in a.elements) or '-'}", file=out)
        for flag in a.flags:
            print(f"  {flag.line()}", file=out)
    print(f"{len(analyses)} prompt(s) against {', '.join(providers)}: {n_errors} error(s), {len(flags) - n_errors} warning(s)", file=out)
    return EXIT_USAGE if n_errors else EXIT_OK


COMMANDS = {"check": cmd_check, "run": cmd_run, "resume": cmd_resume, "status": cmd_status, "export": cmd_export, **housekeeping.COMMANDS,
            **api_commands.COMMANDS, "worker": worker_command.cmd_worker, "variations": cmd_variations}


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        load_env_file()  # .env in the working directory: never over a variable already set
        settings = Settings.from_env()
        registry.ensure_loaded(settings.plugin_modules())
        parser = build_parser(settings, out)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return int(e.code or 0)
        return COMMANDS[args.command](args, settings, out)
    except InputError as e:
        print(f"error: {e.worded(flag(e.field))}", file=err)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    except RunStateError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    except DarkroomError as e:
        print(f"error: {e}", file=err)
        return EXIT_FAILED
    except OSError as e:  # disk full, permission denied, …: say what and where, no traceback
        known = storage_error(e)  # a full disk or a read-only folder: named, with what to do (read-only: exit 2)
        if known is not None:
            print(f"error: {known}", file=err)
            return EXIT_USAGE if isinstance(known, InputError) else EXIT_FAILED
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
