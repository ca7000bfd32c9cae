"""Errors the pipeline raises. Every message is written for the person running it.

    DarkroomError                  base; the message is shown to the user verbatim
    ├── InputError                 bad prompt set or bad arguments (CLI exit 2, nothing written);
    │   │                          ``field`` names the input at fault, so each front end words it
    │   │                          its own way (the CLI ``--iterations``, a page its widget's label)
    │   ├── PromptSetInvalid       carries every Problem found, each with its JSON path
    │   └── UsageError             the command line itself: unknown command, bad or missing option
    ├── ConfigError                unknown provider/judge/refiner, bad configuration file
    ├── RunStateError              a run that cannot be resumed, exported or found
    ├── ExportError                nothing to export, or files missing on disk
    ├── StorageError               the data folder, an output folder or the database cannot be used
    │   ├── DiskFull               no space left where Darkroom writes: the run pauses, resumable
    │   ├── StorageUnwritable      a folder is read-only or not permitted (also an InputError: exit 2)
    │   ├── ObjectMissing          an image or sidecar is not in the folder or bucket it was written to
    │   ├── PurgeFailed            deleting several objects stopped part-way (removed: how many went)
    │   └── DatabaseDamaged        the SQLite file is not whole: what is wrong and how to recover
    ├── ProviderError              a provider, judge or refiner call failed (kind says how;
    │   │                          skipped: the services passed over before it, and why)
    │   ├── ContentBlocked         refused by a content policy (never worth retrying as is)
    │   ├── BadImage               the bytes returned are not an acceptable image
    │   └── ChainFailed            every service of a chain was skipped or failed
    └── how a prompt's work ends inside a run (caught by the runner, never shown as such):
        ├── StepFailed             a step failed for good: the prompt ends failed or blocked
        ├── Stopped                the run is stopping: the prompt goes back to pending
        └── BudgetReached          the next call would pass the run's budget: the run pauses
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.redaction import redact


class DarkroomError(Exception):
    """Base class; str(error) is fit to show to a user. No configured secret survives in it
    (a service may quote a key back in the text an error is made from)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class InputError(DarkroomError):
    """Bad input. ``field`` is the input's name as the CLI spells its option (``iterations``,
    ``target_score``, ``output``); ``detail`` is the message without it."""

    def __init__(self, message: str, *, field: str = "") -> None:
        self.field = field
        self.detail = redact(message)
        super().__init__(f"{field}: {message}" if field else message)

    def worded(self, label: str) -> str:
        """The message with the field called ``label`` (``--iterations`` on the command line,
        ``Iterations per prompt`` on a page)."""
        return f"{label}: {self.detail}" if self.field else str(self)


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


class UsageError(InputError):
    """The command line could not be parsed (argparse's complaint, worded by it)."""


class ConfigError(DarkroomError):
    pass


class RunStateError(DarkroomError):
    pass


class ExportError(DarkroomError):
    pass


@dataclass(frozen=True)
class Skip:
    """A service passed over in a chain, and why (recorded with the step that was served or failed)."""

    service: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"service": self.service, "reason": self.reason}


class ProviderError(DarkroomError):
    """A failed call to a provider, judge or refiner.

    ``kind`` is a short stable word for charts and the call log: ``timeout``, ``rate_limited``,
    ``auth``, ``not_found``, ``bad_request``, ``conflict``, ``server``, ``connection``,
    ``malformed``, ``bad_image``, ``too_large`` (a body over its cap), ``refused`` (a URL the
    configuration does not let us fetch), ``blocked``, ``unavailable``, ``cancelled``, ``internal``.
    ``retryable`` is the provider's own view; the retry policy makes the final decision.
    ``skipped`` lists the services of the chain passed over before this error ended the call.
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
        skipped: Sequence[Skip] = (),
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.skipped: list[Skip] = list(skipped)


class ContentBlocked(ProviderError):
    kind = "blocked"


class BadImage(ProviderError):
    kind = "bad_image"


class ChainFailed(ProviderError):
    """Every service in the chain was skipped or failed; the message says why for each."""

    def __init__(self, role: str, skipped: Sequence[Skip], last: ProviderError | None) -> None:
        reasons = "; ".join(f"{s.service}: {s.reason}" for s in skipped)
        super().__init__(f"no {role} could serve the request ({reasons})", kind=last.kind if last else "unavailable",
                         http_status=last.http_status if last else None, skipped=skipped)


class StepFailed(DarkroomError):
    """A step of a prompt failed for good; the prompt ends ``status`` (failed or blocked)."""

    def __init__(self, status: str, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, str(self)  # redacted, like every message


class Stopped(DarkroomError):
    """The run is stopping; this prompt goes back to pending, its finished steps kept."""


class BudgetReached(DarkroomError):
    """The next call would take the run over its spending cap."""


DISK_FULL_PREFIX = "disk full"  # how a run paused by a full disk says so in its error (not its budget)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"  # pragma: no cover


class StorageError(DarkroomError):
    """The data folder, an output folder or the database cannot be used; the message says what to do."""


class DiskFull(StorageError):
    """No space left (or over quota) where Darkroom writes: the run pauses, resumable once space is freed."""

    def __init__(self, path: Path | str, *, needed: int | None = None, free: int | None = None, what: str = "") -> None:
        self.path, self.needed, self.free = Path(path), needed, free
        need = f"about {human_bytes(needed)} needed" if needed else "more space needed"
        have = f", {human_bytes(free)} free there" if free is not None else ""
        super().__init__(f"{DISK_FULL_PREFIX}: cannot write {what or 'to'} {path} ({need}{have}); "
                         f"free some space on that disk, then resume the run")


class StorageUnwritable(StorageError, InputError):
    """A folder Darkroom must write to is read-only or not permitted (CLI exit 2, like any bad setup)."""


class ObjectMissing(StorageError):
    """An image or sidecar recorded as written is not in the storage (folder or bucket) any more."""


class PurgeFailed(StorageError):
    """Deleting several objects stopped part-way: ``removed`` of them were gone by then."""

    def __init__(self, message: str, removed: int) -> None:
        super().__init__(message)
        self.removed = removed


class DatabaseDamaged(StorageError):
    """The SQLite file is not whole: say what is wrong and how to recover, nothing else."""

    def __init__(self, path: Path, problem: str, images: Path | None = None) -> None:
        self.path, self.problem = path, problem
        wal = path.with_name(path.name + "-wal").name
        shm = path.with_name(path.name + "-shm").name
        where = f"under {images}/<run id>/results/" if images else "in each run's results/ folder"
        super().__init__(
            f"the database {path} is damaged: {problem}. Darkroom cannot use it as it is. To recover:\n"
            f"  1. check it: python -m pipeline.store.check  (SQLite's integrity check, with what it finds)\n"
            f"  2. restore your backup copy of {path.name} over it (delete {wal} and {shm} beside it first), or move the "
            f"damaged file aside: Darkroom then starts a new, empty database and never writes into the old run folders\n"
            f"  3. your images and their JSON sidecars are not in the database and are untouched: {where} "
            f"(and in any --output folder)")
