"""Configured secrets, and text with them taken out.

A service may quote a key back in its error ("Invalid API key: sk-…"); that text then reaches
errors, the database, summaries, logs and the screen. :func:`redact` replaces every configured
secret in a text with ``[NAME redacted]``. :class:`pipeline.errors.DarkroomError` applies it to
every message it is given, and the log handlers apply it again (:mod:`pipeline.logs`).

Secrets are the values of environment variables named like keys, tokens and passwords
(``FAL_KEY``, ``OPENAI_API_KEY``, ``CLOUDFLARE_API_TOKEN``, ``WORKER_TOKEN``, the bucket's
``AWS_SECRET_ACCESS_KEY``, ``AWS_ACCESS_KEY_ID`` and ``AWS_SESSION_TOKEN``…; Streamlit exports
``secrets.toml``'s root keys there), the same names in ``.streamlit/secrets.toml`` at any depth,
the same names in ``.env`` in the working directory, and passwords inside URLs (``DARKROOM_DATABASE_URL``). This module imports nothing of the pipeline.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from dotenv import dotenv_values

SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(?:_|$)", re.IGNORECASE)
MIN_SECRET_CHARS = 8  # shorter values ("true", "1234") would take ordinary words out of messages
SECRETS_FILES = (Path(__file__).resolve().parent.parent / ".streamlit" / "secrets.toml", Path(".streamlit") / "secrets.toml",
                 Path.home() / ".streamlit" / "secrets.toml")
ENV_FILE = Path(".env")  # read beside secrets.toml (pipeline.envfile loads it into the environment)
_file_cache: dict[Path, tuple[int, list[tuple[str, str]]]] = {}
_env_cache: dict[str, tuple[dict[Any, Any], list[tuple[str, str]]]] = {}


def secret_of(name: str, value: object) -> str | None:
    """The secret in a setting: the whole value of a key, token or password, or a URL's password."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_CHARS:
        return None
    if SECRET_NAME.search(name):
        return value
    if "://" in value and "@" in value:
        try:
            password = urlsplit(value).password
        except ValueError:
            return None
        return password if password and len(password) >= MIN_SECRET_CHARS else None
    return None


def _cached(path: Path, read: Callable[[Path], list[tuple[str, str]]]) -> list[tuple[str, str]]:
    """``read(path)``, read again only when the file changes (every message is redacted: no re-parse each time)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return []
    cached = _file_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    found = read(path)
    _file_cache[path] = (mtime, found)
    return found


def _toml_secrets(path: Path) -> list[tuple[str, str]]:
    """(name, secret) pairs of a ``secrets.toml`` (any table)."""
    found: list[tuple[str, str]] = []
    try:
        with path.open("rb") as f:
            tables = [tomllib.load(f)]
    except (OSError, tomllib.TOMLDecodeError):
        tables = []
    while tables:
        for name, value in tables.pop().items():
            if isinstance(value, dict):
                tables.append(value)
            elif (secret := secret_of(name, value)) is not None:
                found.append((name, secret))
    return found


def _dotenv_secrets(path: Path) -> list[tuple[str, str]]:
    """(name, secret) pairs of a ``.env`` file (a value the real environment overrides is still a secret)."""
    try:
        values = dotenv_values(path)
    except (OSError, UnicodeDecodeError):
        values = {}
    return [(name, secret) for name, value in values.items() if (secret := secret_of(name, value)) is not None]


def _environment_secrets() -> list[tuple[str, str]]:
    """(name, secret) pairs of the environment, worked out again only when it changed: every message
    and every stored service answer is redacted, and decoding and matching each variable per call
    cost ~0.1 ms (comparing the raw environment with a copy costs ~1 µs)."""
    raw = getattr(os.environ, "_data", None)  # CPython's bytes (or str) mapping behind os.environ
    cached = _env_cache.get("environ")
    if raw is not None and cached is not None and cached[0] == raw:
        return cached[1]
    pairs = [(name, secret) for name, value in os.environ.items() if (secret := secret_of(name, value)) is not None]
    if raw is not None:
        _env_cache["environ"] = (dict(raw), pairs)
    return pairs


def configured_secrets() -> list[tuple[str, str]]:
    """Every configured secret as (setting name, value), longest first (a key containing another goes first)."""
    pairs = list(_environment_secrets())
    for path in SECRETS_FILES:
        pairs += _cached(path, _toml_secrets)
    pairs += _cached(ENV_FILE, _dotenv_secrets)
    return sorted(set(pairs), key=lambda p: (-len(p[1]), p[0]))


def redact(text: str) -> str:
    """``text`` with every configured secret, as is or URL-encoded, replaced by ``[NAME redacted]``."""
    if not text:
        return text
    for name, secret in configured_secrets():
        for form in {secret, quote(secret, safe="")}:
            if form in text:
                text = text.replace(form, f"[{name} redacted]")
    return text
