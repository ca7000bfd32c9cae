"""Where a run's images and sidecars live: the data folder (the default) or an S3-compatible bucket.

A store holds objects under keys like ``results/<prompt id>/iteration_2.png`` (the same relative
path the database records in ``Iteration.image_path``). Two kinds:

- :class:`LocalStore`: a folder; a put is ``files.atomic_write_bytes`` (a temporary file renamed
  into place), so the data folder holds exactly what it held before storage was configurable;
- :class:`pipeline.store.s3.S3Store`: ``DARKROOM_STORAGE_URL=s3://bucket/prefix``; a put is one
  PUT carrying the bytes' SHA-256 and MD5, which the server checks before the object exists.

Either way an object is seen whole or not at all, and a read of more than ``[storage]
max_object_mb`` is refused. A run's store: :func:`run_store`; an image by its database path:
:func:`open_image` / :func:`read_range` (for the API, the doctor, the Review page).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

from pipeline.config import Settings, defaults_from, from_table
from pipeline.errors import ConfigError, ObjectMissing, PurgeFailed, StorageError
from pipeline.files import TEMP_PREFIX, atomic_write_bytes, json_bytes, storage_error
from pipeline.store.models import Run

CHUNK = 1 << 20  # streamed reads come in pieces of this size
ADDRESSING_STYLES = ("auto", "path", "virtual")  # https://host/bucket/key or https://bucket.host/key


@dataclass(frozen=True)
class ObjectInfo:
    key: str  # relative to the store
    size: int
    modified: datetime
    sha256: str = ""  # recorded beside the object when it was put ("" when the store cannot say)


@dataclass(frozen=True)
@defaults_from("storage")
class StorageOptions:
    """The ``[storage]`` table: every call to a bucket bounded in time, tries and bytes."""

    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    max_object_mb: float
    addressing_style: str
    upload_workers: int

    @property
    def max_bytes(self) -> int:
        return int(self.max_object_mb * 1_000_000)

    @classmethod
    def of(cls, settings: Settings) -> "StorageOptions":
        options = from_table(cls, settings.section("storage"))
        if options.addressing_style not in ADDRESSING_STYLES:
            raise ConfigError(f"[storage] addressing_style = {options.addressing_style!r} should be one of "
                              f"{', '.join(ADDRESSING_STYLES)}")
        return options


class ObjectStore(Protocol):
    """What a run's images and sidecars are written to and read from."""

    def where(self, key: str) -> str:
        """The object's place as a person would name it (a path, an ``s3://`` URL), for messages."""
        ...

    def put(self, key: str, data: bytes, *, sha256: str = "", durable: bool = True, content_type: str = "") -> None:
        """Store ``data`` whole or not at all; ``sha256``: the hash the caller recorded (checked first)."""
        ...

    def get(self, key: str) -> bytes: ...

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``start`` up to (not including) ``end``."""
        ...

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in pieces of at most :data:`CHUNK` (never whole in memory)."""
        ...

    def info(self, key: str) -> ObjectInfo | None:
        """Size, time and recorded hash; None when there is no such object."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (no error when it is already gone)."""
        ...

    def listing(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``."""
        ...

    def purge(self, prefix: str = "") -> tuple[int, int]:
        """Delete every object whose key starts with ``prefix``; (objects, bytes) removed.
        :class:`PurgeFailed` (saying how many were removed) when it stops part-way."""
        ...

    def delete_many(self, keys: list[str]) -> int:
        """Delete these objects (in batches where the store has them); how many. :class:`PurgeFailed` part-way."""
        ...

    def move(self, key: str, new_key: str) -> None:
        """Put the object under ``new_key`` and remove it from ``key`` (the doctor's orphans)."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The object's file when the store is a folder (for ``FileResponse``, ``zipfile``); else None."""
        ...


def clean_key(key: str) -> str:
    """``key`` as a relative POSIX path; a key that would leave its store is refused."""
    path = PurePosixPath(key.replace("\\", "/"))
    if not key or path.is_absolute() or ".." in path.parts:
        raise StorageError(f"{key!r} is not a usable storage key (it must be a relative path inside the run)")
    return str(path)


class LocalStore:
    """A folder: today's layout, byte for byte."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root, self.max_bytes = root, max_bytes

    def _path(self, key: str) -> Path:
        return self.root / clean_key(key)

    def where(self, key: str) -> str:
        return str(self._path(key))

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put(self, key: str, data: bytes, *, sha256: str = "", durable: bool = True, content_type: str = "") -> None:
        """``sha256`` is not checked here: a file renamed into place is whole, and the callers hash the same bytes."""
        atomic_write_bytes(self._path(key), data, durable=durable)

    def _open(self, key: str) -> Any:
        path = self._path(key)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise ObjectMissing(f"{path} is missing") from None
        except OSError as e:
            raise storage_error(e, path) or StorageError(f"cannot read {path}: {e.strerror or e}") from None
        size = os.fstat(f.fileno()).st_size
        if size > self.max_bytes:
            f.close()
            raise StorageError(f"{path} is {size:,} bytes, more than [storage] max_object_mb allows")
        return f

    def get(self, key: str) -> bytes:
        with self._open(key) as f:
            data: bytes = f.read()
            return data

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._open(key) as f:
            f.seek(start)
            data: bytes = f.read(max(0, end - start))
            return data

    def chunks(self, key: str) -> Iterator[bytes]:
        with self._open(key) as f:
            while block := f.read(CHUNK):
                yield block

    def info(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(clean_key(key), st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def listing(self, prefix: str = "") -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        for path in sorted(self.root.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if path.is_file() and key.startswith(prefix) and not path.name.startswith(TEMP_PREFIX):
                st = path.stat()
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))


    def purge(self, prefix: str = "") -> tuple[int, int]:
        count = size = 0
        for found in list(self.listing(prefix)):
            try:
                self.delete(found.key)
            except OSError as e:
                raise PurgeFailed(f"cannot delete {self.where(found.key)}: {e.strerror or e}", count) from None
            count, size = count + 1, size + found.size
        return count, size

    def delete_many(self, keys: list[str]) -> int:
        for done, key in enumerate(keys):
            try:
                self.delete(key)
            except OSError as e:
                raise PurgeFailed(f"cannot delete {self.where(key)}: {e.strerror or e}", done) from None
        return len(keys)

    def move(self, key: str, new_key: str) -> None:
        target = self._path(new_key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path(key), target)


def put_json(store: ObjectStore, key: str, payload: Any) -> None:
    """A JSON sidecar: a mirror of the database, rewritten on resume, so not fsynced."""
    store.put(key, json_bytes(payload), durable=False, content_type="application/json")


# ---- which store ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BucketPlace:
    bucket: str
    prefix: str  # no leading or trailing "/"

    def joined(self, *parts: str) -> "BucketPlace":
        prefix = "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))
        return BucketPlace(self.bucket, prefix)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


def parse_bucket_url(url: str, *, what: str = "DARKROOM_STORAGE_URL") -> BucketPlace:
    """``s3://bucket/some/prefix`` as its parts; anything else is refused, naming ``what``."""
    parts = urlsplit(url.strip())
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment or "@" in parts.netloc:
        shown = repr(url) if "@" not in url else "a URL with credentials in it"
        raise ConfigError(f"{what}: {shown} is not an S3 location; write it as s3://bucket or s3://bucket/prefix "
                          "(the endpoint, region and keys come from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, "
                          "AWS_SECRET_ACCESS_KEY)")
    prefix = parts.path.strip("/")
    if ".." in PurePosixPath(prefix).parts:
        raise ConfigError(f"{what}: {url!r}: the prefix may not contain '..'")
    return BucketPlace(parts.netloc, prefix)


def bucket_store(place: BucketPlace, options: StorageOptions) -> ObjectStore:
    """A store over ``place``, its client made from the AWS_* environment (one client per endpoint, shared)."""
    from pipeline.store.s3 import S3Store, client_for

    return S3Store(client_for(options, **endpoint_from_env()), place.bucket, place.prefix, options)


def endpoint_from_env() -> dict[str, str]:
    """Endpoint and region from the environment (the keys are read by the client itself, never kept here)."""
    return {"endpoint_url": os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "",
            "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}


def in_bucket(settings: Settings) -> bool:
    return bool(settings.storage_url)


def storage_root(settings: Settings) -> ObjectStore:
    """The whole of ``DARKROOM_STORAGE_URL``'s place (every run's folder below it): for the doctor."""
    return bucket_store(parse_bucket_url(settings.storage_url), StorageOptions.of(settings))


def delete_urls(settings: Settings, urls: list[str]) -> int:
    """Delete objects named by their ``s3://bucket/key`` URLs, grouped per bucket into batched requests."""
    per_bucket: dict[str, list[str]] = {}
    for url in urls:
        place = parse_bucket_url(url, what="an object to delete")
        per_bucket.setdefault(place.bucket, []).append(place.prefix)
    options, done = StorageOptions.of(settings), 0
    for bucket, keys in per_bucket.items():
        try:
            done += bucket_store(BucketPlace(bucket, ""), options).delete_many(keys)
        except PurgeFailed as e:
            raise PurgeFailed(str(e), done + e.removed) from None
    return done


def run_key_root(run: Run) -> str:
    """A run's folder inside the bucket: its data-folder path (``runs/<project>/<id>``), or ``runs/<id>``
    for a run given its own ``--output`` folder (a machine's absolute path means nothing in a bucket)."""
    path = Path(run.output_dir)
    return f"runs/{run.id}" if path.is_absolute() or ".." in path.parts else path.as_posix()


def bucket_holds(settings: Settings, run_folder: str) -> bool:
    """Whether the bucket already holds objects under a run's folder (``runs/<id>``): a database started
    afresh counts ids from 1 again, and its runs must not write over the objects of the old ones."""
    if not in_bucket(settings):
        return False
    place = parse_bucket_url(settings.storage_url).joined(run_folder)
    return next(iter(bucket_store(place, StorageOptions.of(settings)).listing("")), None) is not None


def run_store(settings: Settings, run: Run, output_dir: Path | None = None) -> ObjectStore:
    """Where ``run``'s images and sidecars go: its output folder, or its place in the bucket.

    ``output_dir``: the folder already worked out (``records.output_dir_of``); by default the same rule.
    """
    options = StorageOptions.of(settings)
    if in_bucket(settings):
        return bucket_store(parse_bucket_url(settings.storage_url).joined(run_key_root(run)), options)
    if output_dir is None:
        output_dir = Path(run.output_dir) if Path(run.output_dir).is_absolute() else settings.data_dir / run.output_dir
    return LocalStore(output_dir, max_bytes=options.max_bytes)


def open_image(settings: Settings, run: Run, relative_path: str) -> tuple[ObjectInfo, Iterator[bytes]]:
    """An image by its recorded path: its size and time (for Content-Length, Last-Modified), and its bytes
    streamed. :class:`ObjectMissing` at once when it is gone (before a response has started)."""
    store = run_store(settings, run)
    info = store.info(relative_path)
    if info is None:
        raise ObjectMissing(f"{store.where(relative_path)} is missing")
    return info, store.chunks(relative_path)


def read_range(settings: Settings, run: Run, relative_path: str, start: int, end: int) -> bytes:
    """Bytes ``start`` … ``end - 1`` of an image (an HTTP Range request)."""
    return run_store(settings, run).read_range(relative_path, start, end)

