"""Configured secrets, and text with them taken out.

A service may quote a key back in its error ("Invalid API key: sk-…"); that text then reaches
errors, the database, summaries, logs and the screen. :func:`redact` replaces every configured
secret in a text with ``[NAME redacted]``. :class:`pipeline.errors.DarkroomError` applies it to
every message it is given, and the log handlers apply it again (:mod:`pipeline.logs`).

Secrets are the values of environment variables named like keys, tokens and passwords
(``FAL_KEY``, ``OPENAI_API_KEY``, ``CLOUDFLARE_API_TOKEN``, ``WORKER_TOKEN``…; Streamlit exports
``secrets.toml``'s root keys there), the same names in ``.streamlit/secrets.toml`` at any depth,
and passwords inside URLs (``DARKROOM_DATABASE_URL``). This module imports nothing of the pipeline.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from urllib.parse import quote, urlsplit

SECRET_NAME = re.compile(r"(?:^|_)(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(?:_|$)", re.IGNORECASE)
MIN_SECRET_CHARS = 8  # shorter values ("true", "1234") would take ordinary words out of messages
SECRETS_FILES = (Path(__file__).resolve().parent.parent / ".streamlit" / "secrets.toml", Path(".streamlit") / "secrets.toml",
                 Path.home() / ".streamlit" / "secrets.toml")
_file_cache: dict[Path, tuple[int, list[tuple[str, str]]]] = {}


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


def _file_secrets(path: Path) -> list[tuple[str, str]]:
    """(name, secret) pairs of a ``secrets.toml`` (any table), read again when the file changes."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return []
    cached = _file_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
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
    _file_cache[path] = (mtime, found)
    return found


def configured_secrets() -> list[tuple[str, str]]:
    """Every configured secret as (setting name, value), longest first (a key containing another goes first)."""
    pairs = [(name, secret) for name, value in os.environ.items() if (secret := secret_of(name, value)) is not None]
    for path in SECRETS_FILES:
        pairs += _file_secrets(path)
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
