"""Darkroom's domain package: prompt sets in; generated, judged, refined images out.

Pure Python: nothing here imports streamlit. The dashboard (``app.py``, ``pages/``) reads and
writes the database only through these modules. Map:

- ``promptset``   read and validate prompt-set JSON; compose the text sent to a provider
- ``models``, ``migrations``, ``db``   the SQLModel tables, ordered migrations, the engine
- ``components``, ``registry``   provider/judge/refiner contracts and the registry by name
- ``providers/``, ``judges/``, ``refiners/``   built-ins (``offline`` works with no keys)
- ``lexicon``, ``elements``, ``scoring``   prompt words -> visual intent, DSG elements, the overall score
- ``runs``, ``runner``, ``steps``   run records, the worker pool, one prompt's loop
- ``files``, ``images``, ``sidecars``   atomic writes, image checks and thumbnails, JSON mirrors
- ``ratings``, ``export``   reviewers' ratings and the zip builder
- ``cli``, ``logs``, ``progress``   ``python -m pipeline``
"""

__version__ = "0.1.0"
