"""An S3-compatible bucket as an :class:`~pipeline.store.objects.ObjectStore`, through boto3.

Why boto3 (botocore underneath): it is the reference client every S3-compatible server (AWS,
MinIO, Ceph, R2, Wasabi, Backblaze) tests against; it signs requests (SigV4), reads the standard
AWS_* variables and profile files, has bounded connect/read timeouts and a documented retry mode
("standard": 5xx, throttling, dropped connections, timeouts, with backoff), and is synchronous,
which fits here: the runner already writes images from a worker thread. obstore is async-first and
aiobotocore/s3fs add an event-loop or filesystem layer this code does not need.

A put is one ``PutObject`` carrying ``Content-MD5`` and ``x-amz-checksum-sha256``: the server
checks the body against them and creates nothing when they differ or the upload breaks off, so a
key never shows part of an object. The hex SHA-256 also goes into the object's metadata
(``x-amz-meta-sha256``) so a read can check the bytes and a resume can check an image without
downloading it. Every failure becomes a :class:`StorageError` naming the object and what to do;
the keys never appear in one (botocore does not quote them, and DarkroomError redacts anyway).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from pipeline.errors import ObjectMissing, PurgeFailed, StorageError
from pipeline.store.objects import CHUNK, ObjectInfo, StorageOptions, clean_key

T = TypeVar("T")
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
DELETE_BATCH = 1000  # keys per DeleteObjects request (the S3 maximum)
DENIED_CODES = frozenset({"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"})


@functools.lru_cache(maxsize=8)
def _client(options: StorageOptions, endpoint_url: str, region: str, key_id: str) -> Any:
    config = Config(
        connect_timeout=options.connect_timeout_s, read_timeout=options.read_timeout_s,
        retries={"total_max_attempts": max(1, options.max_attempts), "mode": "standard"},
        max_pool_connections=max(10, options.upload_workers * 2),
        s3={"addressing_style": options.addressing_style},
        # The SHA-256 header is set by hand on every put; no extra CRC trailers (not every S3-compatible server takes them).
        request_checksum_calculation="when_required", response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, region_name=region, config=config)


def client_for(options: StorageOptions, *, endpoint_url: str, region: str) -> Any:
    """One boto3 client per endpoint and credentials, shared by every thread (boto3 clients are thread-safe)."""
    return _client(options, endpoint_url, region, os.environ.get("AWS_ACCESS_KEY_ID", ""))


class S3Store:
    def __init__(self, client: Any, bucket: str, prefix: str, options: StorageOptions) -> None:
        self.client, self.bucket, self.prefix, self.options = client, bucket, prefix.strip("/"), options

    def _key(self, key: str) -> str:
        key = clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def where(self, key: str) -> str:
        if clean_key(key) == ".":  # the store's whole prefix (a listing, a purge)
            return f"s3://{self.bucket}/{self.prefix}/" if self.prefix else f"s3://{self.bucket}/"
        return f"s3://{self.bucket}/{self._key(key)}"

    def local_path(self, key: str) -> Path | None:
        return None

    # ---- every call goes through here ---------------------------------------------------------
    def _call(self, action: str, key: str, fn: Callable[[], T]) -> T:
        where = self.where(key)
        o = self.options
        try:
            return fn()
        except ClientError as e:
            error, meta = e.response.get("Error", {}), e.response.get("ResponseMetadata", {})
            code, status = str(error.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
            tries = int(meta.get("RetryAttempts") or 0) + 1
            if code in MISSING_CODES or status == 404 and code != "NoSuchBucket":
                raise ObjectMissing(f"{where} is missing from the bucket") from None
            if code == "NoSuchBucket":
                raise StorageError(f"cannot {action} {where}: the bucket {self.bucket!r} does not exist at "
                                   f"{self.client.meta.endpoint_url}; create it, or correct DARKROOM_STORAGE_URL") from None
            if code in DENIED_CODES or status == 403:
                raise StorageError(f"cannot {action} {where}: permission denied ({code}). Check AWS_ACCESS_KEY_ID and "
                                   "AWS_SECRET_ACCESS_KEY, and that the bucket's policy lets them read, write, list "
                                   "and delete under this prefix") from None
            if status >= 500 or code in ("SlowDown", "Throttling", "RequestTimeout"):
                raise StorageError(f"cannot {action} {where}: the storage service answered {status} {code} "
                                   f"{tries} time(s) in a row; try again later") from None
            message = str(error.get("Message") or "")[:300]
            raise StorageError(f"cannot {action} {where}: the storage service refused it ({status} {code}: {message})") from None
        except (ConnectTimeoutError, ReadTimeoutError):
            raise StorageError(f"cannot {action} {where}: the storage service did not answer within "
                               f"{o.read_timeout_s:g} s ({o.max_attempts} attempt(s)); check AWS_ENDPOINT_URL "
                               "and the network, or raise [storage] read_timeout_s") from None
        except EndpointConnectionError as e:
            raise StorageError(f"cannot {action} {where}: cannot reach the storage service at "
                               f"{getattr(e, 'kwargs', {}).get('endpoint_url', '')} ({o.max_attempts} attempt(s)); "
                               "check AWS_ENDPOINT_URL") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise StorageError(f"cannot {action} {where}: no storage credentials; set AWS_ACCESS_KEY_ID and "
                               "AWS_SECRET_ACCESS_KEY (or an AWS profile)") from None
        except BotoCoreError as e:
            raise StorageError(f"cannot {action} {where}: {type(e).__name__}: {e}") from None

    # ---- the store ----------------------------------------------------------------------------
    def put(self, key: str, data: bytes, *, sha256: str = "", durable: bool = True, content_type: str = "") -> None:
        where = self.where(key)
        if len(data) > self.options.max_bytes:
            raise StorageError(f"cannot upload {where}: {len(data):,} bytes is more than [storage] max_object_mb allows")
        digest = hashlib.sha256(data).digest()
        if sha256 and digest.hex() != sha256:
            raise StorageError(f"{where}: the bytes do not match their recorded SHA-256; nothing was stored")
        extra = {"ContentType": content_type} if content_type else {}
        self._call("upload", key, lambda: self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data,
            ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
            ChecksumSHA256=base64.b64encode(digest).decode(), Metadata={"sha256": digest.hex()}, **extra))

    def _body(self, key: str, **extra: str) -> tuple[Any, int, str]:
        """The streaming body of a GET, its length and recorded hash; too large is refused before reading."""
        answer = self._call("download", key, lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key), **extra))
        size = int(answer.get("ContentLength") or 0)
        if size > self.options.max_bytes:
            answer["Body"].close()
            raise StorageError(f"cannot download {self.where(key)}: {size:,} bytes is more than [storage] max_object_mb allows")
        return answer["Body"], size, str((answer.get("Metadata") or {}).get("sha256", ""))

    def _read(self, key: str, body: Any, size: int) -> bytes:
        try:
            data: bytes = self._call("download", key, lambda: body.read(min(size, self.options.max_bytes) + 1))
        finally:
            body.close()
        if len(data) != size:
            raise StorageError(f"cannot download {self.where(key)}: the answer broke off after {len(data):,} of {size:,} bytes")
        return data

    def get(self, key: str) -> bytes:
        body, size, sha256 = self._body(key)
        data = self._read(key, body, size)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise StorageError(f"{self.where(key)}: the bytes downloaded do not match the SHA-256 recorded when it was "
                               "stored (damaged in the bucket or on the way)")
        return data

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        body, size, _ = self._body(key, Range=f"bytes={start}-{end - 1}")
        return self._read(key, body, size)

    def chunks(self, key: str) -> Iterator[bytes]:
        body, _, _ = self._body(key)
        try:
            blocks = body.iter_chunks(CHUNK)
            while True:
                block = self._call("download", key, lambda: next(blocks, b""))
                if not block:
                    return
                yield block
        finally:
            body.close()

    def info(self, key: str) -> ObjectInfo | None:
        try:
            head = self._call("look up", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
        except ObjectMissing:
            return None
        modified = head.get("LastModified") or datetime.fromtimestamp(0, UTC)
        return ObjectInfo(clean_key(key), int(head.get("ContentLength") or 0), modified,
                          str((head.get("Metadata") or {}).get("sha256", "")))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key)))

    def _delete_batch(self, keys: list[str], where: str) -> None:
        """One ``DeleteObjects`` request of at most :data:`DELETE_BATCH` keys (relative to the store)."""
        objects = [{"Key": self._key(k)} for k in keys]
        answer = self._call("delete", where, lambda: self.client.delete_objects(
            Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}))
        if errors := answer.get("Errors"):  # S3 answers 200 and names the keys it refused (AccessDenied per key)
            code = str(errors[0].get("Code", ""))
            hint = (" (permission denied: the keys need s3:DeleteObject on this prefix)"
                    if code in DENIED_CODES else "")
            raise StorageError(f"cannot delete {len(errors)} of {len(keys)} object(s) under {self.where(where)}: "
                               f"{code} {errors[0].get('Message', '')}".strip() + hint)

    def purge(self, prefix: str = "") -> tuple[int, int]:
        """Delete in batches of up to 1,000 keys per request (``DeleteObjects``), as listed."""
        count = size = 0
        batch: list[ObjectInfo] = []
        try:
            for found in [*self.listing(prefix), None]:
                if found is not None:
                    batch.append(found)
                if batch and (found is None or len(batch) == DELETE_BATCH):
                    self._delete_batch([o.key for o in batch], prefix or ".")
                    count, size = count + len(batch), size + sum(o.size for o in batch)
                    batch = []
        except PurgeFailed:
            raise
        except StorageError as e:
            raise PurgeFailed(str(e), count) from None
        return count, size

    def delete_many(self, keys: list[str]) -> int:
        done = 0
        try:
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start:start + DELETE_BATCH]
                self._delete_batch(batch, (os.path.commonpath(batch) or ".") if len(batch) > 1 else batch[0])
                done += len(batch)
        except StorageError as e:
            raise PurgeFailed(str(e), done) from None
        return done

    def move(self, key: str, new_key: str) -> None:
        """A server-side copy (metadata and all), then the delete: the object is never in neither place."""
        self._call("copy", key, lambda: self.client.copy_object(
            Bucket=self.bucket, Key=self._key(new_key), CopySource={"Bucket": self.bucket, "Key": self._key(key)},
            MetadataDirective="COPY"))
        self.delete(key)

    def listing(self, prefix: str = "") -> Iterator[ObjectInfo]:
        clean_key(prefix.rstrip("/") or ".")  # a prefix may not leave the store either
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        skip = len(self.prefix) + 1 if self.prefix else 0
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full))
        while page := self._call("list", prefix or ".", lambda: next(pages, None)):
            for row in page.get("Contents", []):
                yield ObjectInfo(str(row["Key"])[skip:], int(row.get("Size") or 0), row.get("LastModified") or datetime.fromtimestamp(0, UTC))
