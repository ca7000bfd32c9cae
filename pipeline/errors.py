"""Errors the pipeline raises. Every message is written for the person running it.

    DarkroomError                  base; the message is shown to the user verbatim
    ├── InputError                 bad prompt set or bad arguments (CLI exit 2, nothing written)
    │   └── PromptSetInvalid       carries every Problem found, each with its JSON path
    ├── ConfigError                unknown provider/judge/refiner, bad configuration file
    ├── RunStateError              a run that cannot be resumed, exported or found
    ├── ExportError                nothing to export, or files missing on disk
    └── ProviderError              a provider, judge or refiner call failed (kind says how)
        ├── ContentBlocked         refused by a content policy (never worth retrying as is)
        └── BadImage               the bytes returned are not an acceptable image
"""

from __future__ import annotations

from dataclasses import dataclass


class DarkroomError(Exception):
    """Base class; str(error) is fit to show to a user."""


class InputError(DarkroomError):
    pass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, located by its JSON path (e.g. ``prompts[3].id``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PromptSetInvalid(InputError):
    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        count = len(problems)
        head = f"{source}: " if source else ""
        lines = [f"{head}{count} problem{'s' if count != 1 else ''} in the prompt set:"]
        lines += [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


class ConfigError(DarkroomError):
    pass


class RunStateError(DarkroomError):
    pass


class ExportError(DarkroomError):
    pass


class ProviderError(DarkroomError):
    """A failed call to a provider, judge or refiner.

    ``kind`` is a short stable word for charts and the call log: ``timeout``, ``rate_limited``,
    ``auth``, ``not_found``, ``bad_request``, ``server``, ``connection``, ``malformed``,
    ``bad_image``, ``blocked``, ``internal``. ``retryable`` is the provider's own view; the retry
    policy makes the final decision.
    """

    kind = "internal"

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        http_status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after


class ContentBlocked(ProviderError):
    kind = "blocked"


class BadImage(ProviderError):
    kind = "bad_image"
