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
