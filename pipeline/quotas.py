"""What services say about their quotas: OpenAI's ``x-ratelimit-*`` headers, credit costs.

A vendor module reports what it received (:func:`observe_headers`, :func:`observe_credits`);
the latest reading per service is kept here for the process (and, when a file is set with
:func:`persist_to`, written there for the Providers page of another process). The rate limiter
asks :func:`pause_before_limit` after each call: when a service's remaining allowance falls
into the last ``reserve`` share of its limit, calls slow down, and at zero they wait for the
reset, before the service would answer 429.

OpenAI sends, per response, ``x-ratelimit-limit-requests``, ``-remaining-requests``,
``-reset-requests`` (a duration such as ``6m0s`` or ``20ms``), and the same for ``-tokens``
(https://platform.openai.com/docs/guides/rate-limits). Any ``x-ratelimit-{limit,remaining,reset}-<kind>``
is read alike. This module imports nothing of the pipeline but :mod:`pipeline.files` and :mod:`pipeline.errors`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import StorageError
from pipeline.files import atomic_write_json

HEADER = re.compile(r"^x-ratelimit-(limit|remaining|reset)-([a-z0-9_-]+)$")
DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_PAUSE_S = 120.0  # never wait longer than this on a reading (a reset far ahead is the service's 429 to tell)
PERSIST_EVERY_S = 1.0
QUOTAS_FILE = "quotas.json"  # in the data folder


def parse_duration(text: str) -> float | None:
    """``"6m0s"`` -> 360.0, ``"20ms"`` -> 0.02, ``"1.5"`` (plain seconds) -> 1.5; None when unreadable."""
    text = text.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * UNIT_SECONDS[u] for n, u in parts)


@dataclass
class Allowance:
    """One kind of limit (requests, tokens, images…) as the service last reported it."""

    limit: int | None = None
    remaining: int | None = None
    reset_s: float | None = None  # seconds after ``at`` when the allowance is whole again

    @property
    def share_left(self) -> float | None:
        if self.limit is None or self.remaining is None or self.limit <= 0:
            return None
        return max(0.0, self.remaining / self.limit)


@dataclass
class QuotaReading:
    service: str
    at: float = field(default_factory=time.time)  # wall-clock seconds
    allowances: dict[str, Allowance] = field(default_factory=dict)
    credits_used: float = 0.0  # summed over this process's calls (Leonardo apiCreditCost)
    cost_usd: float = 0.0  # the service's own cost figures, summed (Runware cost)
    balance: float | None = None  # credits or money left, where a service reports it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "QuotaReading":
        return cls(service=str(data["service"]), at=float(data.get("at", 0.0)),
                   allowances={k: Allowance(**v) for k, v in dict(data.get("allowances") or {}).items()},
                   credits_used=float(data.get("credits_used") or 0.0), cost_usd=float(data.get("cost_usd") or 0.0),
                   balance=data.get("balance"))


def parse_ratelimit_headers(headers: Mapping[str, str]) -> dict[str, Allowance]:
    """The ``x-ratelimit-*`` allowances in ``headers`` (any case); unreadable values are left out."""
    found: dict[str, Allowance] = {}
    for name, value in headers.items():
        match = HEADER.match(name.lower())
        if not match:
            continue
        what, kind = match.groups()
        allowance = found.setdefault(kind, Allowance())
        if what == "reset":
            allowance.reset_s = parse_duration(value)
        else:
            try:
                setattr(allowance, what, int(float(value)))
            except ValueError:
                continue
    return {k: a for k, a in found.items() if a.limit is not None or a.remaining is not None}


class QuotaBoard:
    """The latest reading per service, shared by the threads of one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readings: dict[str, QuotaReading] = {}
        self._path: Path | None = None
        self._written = 0.0
        self._unsaved = False  # a reading came in since the file was last written

    def persist_to(self, path: Path | None) -> None:
        self._path = path

    def reset(self) -> None:
        with self._lock:
            self._readings.clear()

    def _reading(self, service: str) -> QuotaReading:
        return self._readings.setdefault(service, QuotaReading(service))

    def observe_headers(self, service: str, headers: Mapping[str, str]) -> None:
        allowances = parse_ratelimit_headers(headers)
        if not allowances:
            return
        with self._lock:
            reading = self._reading(service)
            reading.allowances.update(allowances)
            reading.at = time.time()
            self._unsaved = True
        self._save()

    def observe_credits(self, service: str, *, credits: float | None = None, cost_usd: float | None = None,
                        balance: float | None = None) -> None:
        with self._lock:
            reading = self._reading(service)
            reading.credits_used += credits or 0.0
            reading.cost_usd += cost_usd or 0.0
            if balance is not None:
                reading.balance = balance
            reading.at = time.time()
            self._unsaved = True
        self._save()

    def latest(self, service: str) -> QuotaReading | None:
        with self._lock:
            return self._readings.get(service)

    def readings(self) -> list[QuotaReading]:
        with self._lock:
            return sorted(self._readings.values(), key=lambda r: r.service)

    def _save(self, force: bool = False) -> None:
        if self._path is None or not self._unsaved or (not force and time.monotonic() - self._written < PERSIST_EVERY_S):
            return  # nothing new (a run on services that report no quota writes nothing), or written moments ago
        self._written, self._unsaved = time.monotonic(), False
        try:
            atomic_write_json(self._path, [r.as_dict() for r in self.readings()])
        except (OSError, StorageError):
            self._unsaved = True  # the figures are advisory: a full disk must not fail a call; tried again later

    def flush(self) -> None:
        self._save(force=True)


board = QuotaBoard()


def load(path: Path) -> list[QuotaReading]:
    """Readings a (possibly other) process wrote with :meth:`QuotaBoard.persist_to`; [] when none or unreadable."""
    try:
        return [QuotaReading.from_dict(d) for d in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def pause_before_limit(reading: QuotaReading | None, reserve: float, now: float | None = None) -> float:
    """Seconds to hold the next call so the service's allowance is not used up before it resets.

    0 while every allowance has more than ``reserve`` (a share, 0–1) of its limit left; then a
    pause growing from 0 to the time left until the reset as the remainder goes to 0.
    """
    if reading is None or reserve <= 0:
        return 0.0
    elapsed = max(0.0, (now if now is not None else time.time()) - reading.at)
    pause = 0.0
    for allowance in reading.allowances.values():
        share, reset = allowance.share_left, allowance.reset_s
        if share is None or reset is None or share > reserve:
            continue
        left = max(0.0, reset - elapsed)
        pause = max(pause, left * (1.0 - share / reserve))
    return min(pause, MAX_PAUSE_S)
