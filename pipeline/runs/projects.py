"""Projects: a name, a description, defaults for new runs, and a spending cap across its runs.

A run belongs to one project (runs from before projects belong to ``default``). New runs write
to ``data/runs/<project slug>/<run id>/``; each project folder holds ``project.json`` and each
run folder ``run.json``, so the tree stays readable without the database.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from pipeline.config import Settings
from pipeline.errors import InputError, RunStateError
from pipeline.files import atomic_write_json
from pipeline.store.models import DEFAULT_PROJECT, Project, ProviderCall, Run, row_id

MAX_NAME_CHARS = 100
MAX_SLUG_CHARS = 60
# The defaults a project may hold for its new runs: RunConfig fields, plus the prompt template and a style line.
DEFAULT_KEYS = ("providers", "judge", "refiner", "iterations", "budget_usd", "template", "style")
PROJECT_FILE, RUN_FILE = "project.json", "run.json"


def check_project_name(name: str) -> str:
    """The name stripped; an :class:`InputError` (field ``project``) when it cannot name a project."""
    name = name.strip()
    if not name:
        raise InputError("a project needs a name", field="project")
    if len(name) > MAX_NAME_CHARS:
        raise InputError(f"the project name has {len(name):,} characters, over the limit of {MAX_NAME_CHARS}", field="project")
    if any(ch < " " for ch in name):
        raise InputError("the project name contains a control character (a tab, a line break…)", field="project")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the project name is not valid UTF-8 text", field="project") from None
    return name


def slugify(name: str) -> str:
    """A folder name for ``name``: ASCII letters, digits and dashes (``"Client X / Spring"`` -> ``client-x-spring``)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:MAX_SLUG_CHARS].strip("-")
    slug = slug or "project"
    return f"p-{slug}" if slug[0].isdigit() else slug  # never the name of a run folder (data/runs/<id>)


def check_defaults(defaults: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise InputError(f"{', '.join(unknown)} cannot be a project default (allowed: {', '.join(DEFAULT_KEYS)})", field="project")
    return {k: v for k, v in defaults.items() if v not in (None, "", [])}


def find_project(s: Session, name: str) -> Project | None:
    return s.exec(select(Project).where(Project.name == name.strip())).first()


def get_project(s: Session, name: str) -> Project:
    project = find_project(s, name)
    if project is None:
        raise RunStateError(f"no project {name!r}; `python -m pipeline projects` lists them")
    return project


def list_projects(s: Session) -> list[Project]:
    return list(s.exec(select(Project).where(Project.status == "active").order_by(col(Project.name))))


def create_project(s: Session, settings: Settings, name: str, *, description: str = "", defaults: dict[str, Any] | None = None,
                   budget_usd: float | None = None) -> Project:
    """A new project (flushed); an :class:`InputError` when the name is taken or a value is bad."""
    name = check_project_name(name)
    if find_project(s, name) is not None:
        raise InputError(f"a project named {name!r} exists already", field="project")
    if budget_usd is not None and budget_usd <= 0:
        raise InputError(f"{budget_usd} must be more than 0 (leave it out for no cap)", field="project_budget")
    base, n, slug = slugify(name), 1, slugify(name)
    while s.exec(select(Project.id).where(Project.slug == slug)).first() is not None or _foreign_folder(settings, slug):
        n += 1
        slug = f"{base}-{n}"
    project = Project(name=name, slug=slug, description=description.strip(), defaults=check_defaults(defaults or {}),
                      budget_usd=budget_usd)
    s.add(project)
    s.flush()
    return project


def _foreign_folder(settings: Settings, slug: str) -> bool:
    """A folder of that name holds files the database does not know (a lost database's runs): never reuse it."""
    folder = settings.runs_dir / slug
    return folder.is_dir() and not (folder / PROJECT_FILE).is_file() and any(folder.iterdir())


def ensure_project(s: Session, settings: Settings, name: str | None) -> Project:
    """The project called ``name`` (created when new); ``default`` when no name is given."""
    wanted = check_project_name(name) if name is not None else DEFAULT_PROJECT
    project = find_project(s, wanted)
    if project is not None:
        if project.status != "active":
            raise RunStateError(f"project {wanted!r} is being deleted; finish with: python -m pipeline delete project {wanted!r}")
        return project
    return create_project(s, settings, wanted)


def project_folder(settings: Settings, project: Project) -> Path:
    """Where the project's new runs go: ``data/runs/<slug>``; the default project's runs stay flat in
    ``data/runs/`` as they always were (scripts reading ``data/runs/<id>`` keep working)."""
    return settings.runs_dir if project.name == DEFAULT_PROJECT else settings.runs_dir / project.slug


def spent_by_project(s: Session, project_id: int, *, excluding_run: int | None = None) -> float:
    """What the project's runs have spent so far (the call log), leaving out ``excluding_run``."""
    query = (select(func.coalesce(func.sum(ProviderCall.cost_usd), 0.0))
             .join(Run, col(Run.id) == ProviderCall.run_id).where(Run.project_id == project_id))
    if excluding_run is not None:
        query = query.where(Run.id != excluding_run)
    return float(s.exec(query).one() or 0.0)


def project_of(s: Session, run: Run) -> Project | None:
    return s.get(Project, run.project_id) if run.project_id is not None else None


def describe_project(project: Project) -> dict[str, Any]:
    return {"name": project.name, "slug": project.slug, "description": project.description, "defaults": project.defaults,
            "budget_usd": project.budget_usd, "created_at": project.created_at.isoformat()}


def write_project_file(settings: Settings, project: Project) -> None:
    """``data/runs/<slug>/project.json``: what the folder is, for someone reading it without the database."""
    if project.name != DEFAULT_PROJECT:
        atomic_write_json(project_folder(settings, project) / PROJECT_FILE, describe_project(project))


def write_run_file(folder: Path, run: Run, project: Project | None, prompt_set_name: str) -> None:
    """``<run folder>/run.json``: the run's id, name, project, prompt set and settings."""
    atomic_write_json(folder / RUN_FILE, {
        "run_id": row_id(run), "name": run.name, "project": project.name if project else None, "prompt_set": prompt_set_name,
        "config": run.config, "created_at": run.created_at.isoformat(),
    })


def run_ids_of(s: Session, name: str) -> list[int]:
    """The ids of the project's runs, newest first ([] for an unknown project)."""
    project = find_project(s, name)
    if project is None:
        return []
    return [i for i in s.exec(select(Run.id).where(Run.project_id == project.id).order_by(col(Run.id).desc())).all() if i is not None]


def update_project(s: Session, settings: Settings, name: str, *, description: str, defaults: dict[str, Any],
                   budget_usd: float | None) -> Project:
    """Change a project's description, defaults and cap (its name and folder stay)."""
    project = get_project(s, name)
    if budget_usd is not None and budget_usd <= 0:
        raise InputError(f"{budget_usd} must be more than 0 (leave it out for no cap)", field="project_budget")
    project.description, project.defaults, project.budget_usd = description.strip(), check_defaults(defaults), budget_usd
    s.add(project)
    return project
