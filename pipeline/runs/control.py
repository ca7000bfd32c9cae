"""Run control, one path for the command line and the dashboard: launch, resume, cancel, counts.

Every check a launch or a resume makes comes before anything is written, so a refused one
leaves no run row, no folder and no file behind (the CLI exits 2). Executing a run is the
:class:`~pipeline.runs.runner.RunExecutor`'s job: the CLI runs it in its own process, the
dashboard's :class:`~pipeline.runs.background.BackgroundRunner` in its thread; both stop it
through the executor (Ctrl-C, Cancel) and read its counts as a
:class:`~pipeline.runs.records.RunSummary`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from sqlalchemy.engine import Engine

from pipeline import registry
from pipeline.config import Settings
from pipeline.errors import ConfigError, InputError, StorageError
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.resilience.routing import check_service_settings
from pipeline.runs import prompt_check, shots
from pipeline.runs.projects import check_project_name, ensure_project, write_project_file, write_run_file
from pipeline.runs.records import (
    RunConfig,
    RunSummary,
    check_output_dir_empty,
    check_output_dir_unclaimed,
    claim_for_resume,
    create_run,
    get_run,
    import_prompt_set,
    output_dir_of,
    recover_orphans,
    request_cancel,
    run_summaries,
    run_summary,
)
from pipeline.runs.servable import check_prompt_set
from pipeline.services.catalog import describe
from pipeline.store.db import session
from pipeline.store.references import store_references

log = logging.getLogger("pipeline.runs.control")
__all__ = ["RunSummary", "cancel", "check_components", "check_data_dir", "check_file_target", "check_launch", "check_output_dir",
           "check_prompt_set", "launch", "recover", "resume", "summaries", "summary"]


# ---- Checks (nothing written) -------------------------------------------------------------------
def check_components(config: RunConfig) -> None:
    """Every named provider, judge and refiner exists and has the settings it needs."""
    wanted = ([("providers", "providers", n) for n in config.providers] + [("judges", "judge", n) for n in config.judges]
              + [("refiners", "refiner", n) for n in config.refiners])
    for kind, option, name in wanted:
        info = describe(getattr(registry, kind).get_class(name))
        if info.missing:
            raise InputError(f"{kind[:-1]} {name}: set {' and '.join(info.missing)} (environment or .streamlit/secrets.toml)",
                             field=option)


def _unwritable(folder: Path) -> str:
    """Why no file can be made in the existing ``folder``, or "" (found by making and removing one:
    permission bits say nothing true for root, ACLs or a read-only mount)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or type(e).__name__
    return ""


def _usable_folder(path: Path) -> str:
    """Why ``path`` cannot be (or become) a folder we write in, or ""."""
    if path.exists() and not path.is_dir():
        return f"{path} is a file, not a folder"
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None:
        return f"{path} cannot be created"
    if not existing.is_dir():
        return f"{path} cannot be created: {existing} is a file"
    why = _unwritable(existing)
    return f"{path} cannot be written ({existing}: {why})" if why else ""


def check_output_dir(output_dir: Path) -> None:
    """An output folder a run can write its results to, and whose ``results/`` holds nothing yet."""
    problem = _usable_folder(output_dir) or _usable_folder(output_dir / "results")
    if problem:
        raise InputError(problem, field="output")
    check_output_dir_empty(output_dir)


def check_data_dir(settings: Settings) -> None:
    """The data folder (database, logs, run outputs) can be written before anything is."""
    problem = _usable_folder(settings.data_dir)
    if problem:
        raise ConfigError(f"data folder (DARKROOM_DATA_DIR): {problem}")


def check_file_target(path: Path, option: str) -> None:
    """A file we are about to write (an export's zip): not a folder, in a folder we can write."""
    if path.is_dir():
        raise InputError(f"{path} is a folder; name the file to write", field=option)
    problem = _usable_folder(path.parent)
    if problem:
        raise InputError(problem, field=option)


def check_launch(settings: Settings, config: RunConfig, output_dir: Path | None = None, spec: PromptSetSpec | None = None) -> None:
    """Everything a launch checks before it writes: settings, services, output folder, data folder,
    and that the provider chain can serve every prompt of ``spec`` (its references, size "auto")."""
    config.validate(settings)
    check_components(config)
    for kind, names in (("providers", config.providers), ("judges", config.judges), ("refiners", config.refiners)):
        for name in names:
            check_service_settings(settings, kind, name)
    if spec is not None:
        shots.check_fields(spec, settings)  # "grid" and "images"
        check_prompt_set(settings, spec, config)
        prompt_check.check_prompt_set(settings, spec, config.providers)  # over a provider's hard maximum: refused
    if output_dir is not None:
        check_output_dir(output_dir)
    check_data_dir(settings)


MAX_RUN_NAME_CHARS = 200


def check_run_name(name: str) -> None:
    """A run name is shown on every page and written to manifests: printable Unicode, not too long
    (a terminal may hand over undecodable bytes as lone surrogates, e.g. ``--name $'\\xff'``)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"the run name is not valid UTF-8 text (character {e.start + 1} is an undecodable byte)", field="name") from None
    if len(name) > MAX_RUN_NAME_CHARS:
        raise InputError(f"the run name has {len(name):,} characters, over the limit of {MAX_RUN_NAME_CHARS}", field="name")
    if any(ch < " " for ch in name):
        raise InputError("the run name contains a control character (a tab, a line break…)", field="name")


# ---- Launch, resume, cancel -----------------------------------------------------------------------
def launch(engine: Engine, settings: Settings, spec: PromptSetSpec, config: RunConfig, *, output_dir: Path | None = None,
           name: str = "", claim: bool = False, project: str | None = None) -> int:
    """Queue a run of ``spec`` in ``project`` (created when new; ``default`` when None;
    ``claim=True``: owned by this process, which executes it) and return its id. Raises
    :class:`InputError` (nothing written) when anything is wrong."""
    output_dir = output_dir.resolve() if output_dir is not None else None
    check_launch(settings, config, output_dir, spec)
    check_run_name(name)
    if project is not None:
        check_project_name(project)
    with session(engine) as s:
        recover_orphans(s)
        if output_dir is not None:
            check_output_dir_unclaimed(settings, s, output_dir)
        chosen = ensure_project(s, settings, project)
        store_references(settings.data_dir, spec)  # by content: a launch refused after this leaves only reusable files
        run = create_run(s, settings, import_prompt_set(s, spec), config, output_dir=output_dir, name=name, claim=claim, project=chosen)
        run.config = {**run.config, **{k: v for k, v in chosen.defaults.items() if k in ("template", "style")}}
        s.commit()
        assert run.id is not None  # given by the flush that created it
    try:  # the tree stays readable without the database (written after the commit: a refused launch leaves nothing)
        write_project_file(settings, chosen)
        write_run_file(output_dir_of(settings, run), run, chosen, spec.name)
    except (OSError, StorageError) as e:
        log.warning("run %s: its run.json could not be written (%s); the run goes ahead", run.id, e)
    return run.id


def resume(engine: Engine, settings: Settings, run_id: int, *, retry_failed: bool = False, budget_usd: float | None = None,
           concurrency: int | None = None, claim: bool = False) -> RunConfig:
    """Queue a stopped run again (``claim=True``: owned by this process); only unfinished steps
    are done. ``budget_usd`` replaces its cap, ``concurrency`` its number of workers."""
    if budget_usd is not None and budget_usd <= 0:
        raise InputError(f"{budget_usd} must be more than 0", field="budget")
    with session(engine) as s:
        recover_orphans(s)
        run = get_run(s, run_id)
        problem = _usable_folder(output_dir_of(settings, run))
        if problem:
            raise InputError(f"run {run_id} cannot write its results: {problem}")
        claim_for_resume(s, run, retry_failed=retry_failed, claim=claim, budget_usd=budget_usd)
        config = RunConfig.from_dict(run.config)
        if concurrency is not None:
            config.concurrency = concurrency
            config.validate(settings)
            run.config = config.to_dict()
        check_components(config)
        s.commit()
    return config


def cancel(engine: Engine, run_id: int) -> str:
    """Mark a run cancelled (a queued or stopped one at once; a running one is asked to stop by
    its executor, which notices within a heartbeat). Returns the run's status after the request."""
    with session(engine) as s:
        run = request_cancel(s, run_id)
        s.commit()
        return run.status


# ---- Counts ------------------------------------------------------------------------------------
def summaries(engine: Engine, limit: int = 50) -> list[RunSummary]:
    with session(engine) as s:
        return run_summaries(s, limit)


def summary(engine: Engine, run_id: int) -> RunSummary:
    with session(engine) as s:
        return run_summary(s, run_id)


def recover(engine: Engine) -> list[int]:
    """Mark runs left ``running`` by a dead process ``interrupted``; return their ids."""
    with session(engine) as s:
        recovered = recover_orphans(s)
        s.commit()
    return recovered
