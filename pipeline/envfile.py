"""``.env`` in the working directory: settings and keys, read beside ``.streamlit/secrets.toml``.

Read with python-dotenv (its quoting, ``export`` prefixes, comments and ``${VAR}`` expansion
are those every other tool reading ``.env`` files follows). The secrecy rules are the same as
for the environment: a variable already set in the real environment is never overridden; every
key, token or password in the file is a configured secret, taken out of every message and log
line (:mod:`pipeline.redaction` reads the file too), and nothing prints its values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from dotenv import dotenv_values, load_dotenv

log = logging.getLogger("pipeline.envfile")
ENV_FILE = Path(".env")


def load_env_file(path: Path | None = None) -> list[str]:
    """Set the variables of ``path`` (default ``.env`` in the working directory) that the environment
    does not set already; return their names (never values)."""
    path = ENV_FILE if path is None else path
    if not path.is_file():
        return []
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError) as e:
        log.warning("%s could not be read (%s); its settings are not used", path.resolve(), type(e).__name__)
        return []
    added = sorted(name for name, value in values.items() if value is not None and name not in os.environ)
    load_dotenv(path, override=False)
    if added:
        log.info("read %d setting(s) from %s: %s", len(added), path.resolve(), ", ".join(added))
    return added
