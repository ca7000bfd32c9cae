"""Command line: ``python -m pipeline run|resume|status|export``.

Exit codes: 0 every prompt completed; 1 finished with failed or blocked prompts (or the
command failed); 2 invalid input or usage, with nothing written; 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import TextIO

from pipeline import registry
from pipeline.config import Settings
from pipeline.errors import DarkroomError, InputError, RunStateError
from pipeline.logs import setup_logging
from pipeline.prompts.promptset import Limits, load_file
from pipeline.review.export import build_zip
from pipeline.runs.progress import LogLines, TerminalBar
from pipeline.runs.records import (
    RunConfig,
    check_output_dir_empty,
    check_output_dir_unclaimed,
    claim_for_resume,
    create_run,
    get_run,
    import_prompt_set,
    item_states,
    list_runs,
    output_dir_of,
    recover_orphans,
)
from pipeline.runs.runner import RunExecutor, RunOutcome
from pipeline.services.catalog import describe
from pipeline.store.db import open_database, session

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("pipeline.cli")


class UsageError(InputError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def build_parser(settings: Settings) -> argparse.ArgumentParser:
    run_defaults = settings.section("run")
    parser = _Parser(prog="python -m pipeline", description="Darkroom: generate, judge, refine and regenerate images in bulk.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a prompt set through the pipeline")
    run.add_argument("prompt_set", type=Path, help="prompt-set JSON file")
    run.add_argument("--output", type=Path, help="folder for results/ (default: <data dir>/runs/<run id>)")
    run.add_argument("--providers", default=",".join(run_defaults.get("providers", ["offline"])),
                     help="ordered provider chain, comma-separated (default: %(default)s)")
    run.add_argument("--judge", default=run_defaults.get("judge", "offline"),
                     help="judge, or an ordered chain of judges, comma-separated (default: %(default)s)")
    run.add_argument("--refiner", default=run_defaults.get("refiner", "offline"),
                     help="refiner, or an ordered chain of refiners, comma-separated (default: %(default)s)")
    run.add_argument("--routing", choices=("fallback", "pool"), default=run_defaults.get("routing", "fallback"),
                     help="fallback: providers in chain order; pool: spread over the healthy ones (default: %(default)s)")
    run.add_argument("--block-rewrites", type=int, default=int(run_defaults.get("block_rewrites", 1)),
                     help="times the refiner may rewrite a blocked prompt to comply, 0–3 (default: %(default)s)")
    run.add_argument("--budget", type=float, help="spending cap in USD; the run pauses before a call would pass it")
    run.add_argument("--iterations", type=int, default=int(run_defaults.get("iterations", 2)),
                     help="generate+judge rounds per prompt, 1–5 (default: %(default)s)")
    run.add_argument("--target-score", type=float, help="stop refining a prompt once its score reaches this (0–10)")
    run.add_argument("--concurrency", type=int, default=int(run_defaults.get("concurrency", 3)),
                     help="prompts worked on at once (default: %(default)s)")
    run.add_argument("--name", default="", help="a name for the run (default: the prompt set's name)")

    resume = sub.add_parser("resume", help="continue an interrupted run without redoing finished steps")
    resume.add_argument("run_id", type=int)
    resume.add_argument("--concurrency", type=int, help="change the number of workers")
    resume.add_argument("--retry-failed", action="store_true", help="also retry prompts that failed or were blocked")
    resume.add_argument("--budget", type=float, help="a new spending cap in USD (a paused run needs a higher one)")

    status = sub.add_parser("status", help="list runs, or one run's prompts")
    status.add_argument("run_id", type=int, nargs="?")

    export = sub.add_parser("export", help="write a zip of a run's images and a manifest")
    export.add_argument("run_id", type=int)
    export.add_argument("--out", type=Path, required=True, help="the zip file to write")
    chosen = export.add_mutually_exclusive_group()
    chosen.add_argument("--approved-only", action="store_const", dest="selection", const="approved",
                        help="only images whose latest decision is approved")
    chosen.add_argument("--best", action="store_const", dest="selection", const="best", help="each prompt's best-scoring iteration")
    export.set_defaults(selection="all")
    return parser


def _names(value: str, option: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise InputError(f"{option}: name at least one")
    return names


def _check_components(config: RunConfig) -> None:
    """Every named component exists and has the settings it needs (checked before anything is written)."""
    wanted = ([("providers", n) for n in config.providers] + [("judges", n) for n in config.judges]
              + [("refiners", n) for n in config.refiners])
    for kind, name in wanted:
        info = describe(getattr(registry, kind).get_class(name))
        if info.missing:
            raise InputError(f"{kind[:-1]} {name}: set {' and '.join(info.missing)} (environment or .streamlit/secrets.toml)")


async def _execute(executor: RunExecutor) -> RunOutcome:
    loop = asyncio.get_running_loop()
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        executor.abort() if interrupts > 1 else executor.request_stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_interrupt)
    try:
        return await executor.execute()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run_executor(engine, settings: Settings, run_id: int, out: TextIO) -> int:  # type: ignore[no-untyped-def]
    reporter = TerminalBar() if sys.stderr.isatty() else LogLines()
    executor = RunExecutor(engine, settings, run_id, on_progress=reporter)
    try:
        outcome = asyncio.run(_execute(executor))
    finally:
        reporter.close()
    with session(engine) as s:
        folder = output_dir_of(settings, get_run(s, run_id)) / "results"
    print(f"Run {outcome.run_id} {outcome.status}: {outcome.completed} completed, {outcome.failed} failed, "
          f"{outcome.blocked} blocked of {outcome.total} prompts; ${outcome.cost_usd:.4f}; {outcome.elapsed_s:.1f}s", file=out)
    print(f"Results: {folder}", file=out)
    if outcome.status == "interrupted":
        print(f"{outcome.unfinished} prompt(s) left. Continue with: python -m pipeline resume {outcome.run_id}", file=out)
        return EXIT_INTERRUPTED
    if outcome.status == "paused":
        with session(engine) as s:
            reason = get_run(s, run_id).error
        print(f"Paused: {reason}\n{outcome.unfinished} prompt(s) left. Continue with: "
              f"python -m pipeline resume {outcome.run_id} --budget <more USD>", file=out)
        return EXIT_INTERRUPTED
    if outcome.status == "completed" and not (outcome.failed or outcome.blocked):
        return EXIT_OK
    return EXIT_FAILED


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    judges, refiners = _names(args.judge, "--judge"), _names(args.refiner, "--refiner")
    config = RunConfig(
        providers=_names(args.providers, "--providers"), judge=judges[0], refiner=refiners[0],
        judge_fallbacks=judges[1:], refiner_fallbacks=refiners[1:], iterations=args.iterations, target_score=args.target_score,
        concurrency=args.concurrency, routing=args.routing, block_rewrites=args.block_rewrites, budget_usd=args.budget,
    )
    config.validate(settings)
    _check_components(config)
    spec = load_file(args.prompt_set, Limits.from_settings(settings))
    output_dir = args.output.resolve() if args.output else None
    if output_dir is not None:
        check_output_dir_empty(output_dir)
    # Inputs are valid: from here on things are written.
    log_path = setup_logging(settings.logs_dir, console_level=logging.WARNING if sys.stderr.isatty() else logging.INFO)
    engine = open_database(settings)
    with session(engine) as s:
        recover_orphans(s)
        if output_dir is not None:
            check_output_dir_unclaimed(settings, s, output_dir)
        prompt_set = import_prompt_set(s, spec)
        run = create_run(s, settings, prompt_set, config, output_dir=output_dir, name=args.name, claim=True)
        s.commit()
        run_id = run.id
    log.info("run %s created from %s (%d prompts); log file %s", run_id, args.prompt_set, len(spec.prompts), log_path)
    return _run_executor(engine, settings, run_id, out)


def cmd_resume(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    setup_logging(settings.logs_dir, console_level=logging.WARNING if sys.stderr.isatty() else logging.INFO)
    engine = open_database(settings)
    with session(engine) as s:
        recover_orphans(s)
        run = get_run(s, args.run_id)
        if args.budget is not None and args.budget <= 0:
            raise InputError(f"--budget: {args.budget} must be more than 0")
        claim_for_resume(s, run, retry_failed=args.retry_failed, claim=True, budget_usd=args.budget)
        config = RunConfig.from_dict(run.config)
        if args.concurrency is not None:
            config.concurrency = args.concurrency
            config.validate(settings)
            run.config = config.to_dict()
        _check_components(config)
        s.commit()
    log.info("resuming run %s", args.run_id)
    return _run_executor(engine, settings, args.run_id, out)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip(), file=out)


def cmd_status(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    with session(engine) as s:
        recover_orphans(s)
        s.commit()
        if args.run_id is None:
            runs = list_runs(s)
            if not runs:
                print("No runs yet. Start one with: python -m pipeline run data/samples/seed.json", file=out)
                return EXIT_OK
            rows = [["RUN", "STATUS", "DONE", "FAILED", "BLOCKED", "TOTAL", "COST", "PROVIDERS", "NAME", "CREATED"]]
            for r in runs:
                rows.append([str(r.id), r.status, str(r.completed), str(r.failed), str(r.blocked), str(r.total),
                             f"${r.cost_usd:.4f}", ",".join(r.config.get("providers", [])), r.name, f"{r.created_at:%Y-%m-%d %H:%M}"])
            _table(rows, out)
            return EXIT_OK
        run = get_run(s, args.run_id)
        print(f"Run {run.id} ({run.name}): {run.status}; {run.completed} completed, {run.failed} failed, "
              f"{run.blocked} blocked of {run.total}; ${run.cost_usd:.4f}", file=out)
        print(f"Output: {output_dir_of(settings, run)}", file=out)
        if run.error:
            print(f"Error: {run.error}", file=out)
        rows = [["PROMPT", "STATUS", "ITERATIONS", "BEST", "SCORE", "COST", "ERROR"]]
        for st in item_states(s, run.id):
            rows.append([st.prompt_key, st.status, str(st.iterations), str(st.final_iteration or "-"),
                         f"{st.best_score:.2f}" if st.best_score is not None else "-", f"${st.cost_usd:.4f}", st.error])
        _table(rows, out)
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    engine = open_database(settings)
    with session(engine) as s:
        result = build_zip(s, settings, [args.run_id], args.out, selection=args.selection)
    print(f"Wrote {result.path}: {result.images} image(s), {result.bytes_written:,} bytes", file=out)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "resume": cmd_resume, "status": cmd_status, "export": cmd_export}


def main(argv: list[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        settings = Settings.from_env()
        registry.ensure_loaded(settings.plugin_modules())
        parser = build_parser(settings)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        return COMMANDS[args.command](args, settings, out)
    except (InputError, registry.ConfigError) as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    except RunStateError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    except DarkroomError as e:
        print(f"error: {e}", file=err)
        return EXIT_FAILED
    except OSError as e:  # disk full, permission denied, …: say what and where, no traceback
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=err)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return EXIT_INTERRUPTED
