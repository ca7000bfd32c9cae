"""Darkroom's domain package: prompt sets in; generated, judged, refined images out.

Pure Python: nothing here imports streamlit. The dashboard (``app.py``, ``pages/``) reads and
writes the database only through these parts; the allowed arrows between them are checked by
import-linter (``[tool.importlinter]`` in ``pyproject.toml``):

- contracts: ``components``, ``errors``, ``config``, ``registry``
- leaf helpers: ``files``, ``images``, ``prices``, ``display``, ``logs``, ``redaction``
- ``prompts/``      prompt sets, their visual elements and lexicon
- ``store/``        tables, migrations, the engine, JSON sidecars
- ``resilience/``   retries, breakers, rate limits, the service chain, the budget
- ``services/``     one module per vendor (provider, judge and refiner), the offline stack
- ``runs/``         run records and control, the runner, one prompt's job and its ledger
- ``review/``       gallery, ratings and review events, decisions, export, provider figures
- ``cli``           ``python -m pipeline``
"""

__version__ = "0.1.0"

# What a run's first image needs that no page does: the offline renderer and judge (numpy, Pillow, the grid
# splitter), the services' HTTP stack (aiohttp), a prompt set's check (textstat). Each is imported where it is
# used; a process that will run prompts loads them ahead (the dashboard a moment after its first page, a
# worker as it starts, the benches before a row), so a run's first image does not wait ~0.2 s for them.
RUN_MODULES = ("numpy", "PIL.Image", "pipeline.images", "pipeline.grids", "textstat", "pipeline.services.aio")


def load_run_modules(*, ahead_only: bool = False) -> None:
    """Import :data:`RUN_MODULES` now. ``ahead_only``: a module that fails to load is skipped (logged at
    debug level): whoever needs it meets the same problem where it is used, and reports it there."""
    import importlib
    import logging

    for name in RUN_MODULES:
        try:
            importlib.import_module(name)
        except Exception:
            if not ahead_only:
                raise
            logging.getLogger("pipeline").debug("could not load %s ahead", name, exc_info=True)
