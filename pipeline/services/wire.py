"""HTTP plumbing every networked provider, judge and refiner shares.

- Clients are created per call, inside the running event loop (never cached across loops),
  with the component's timeout and no retries of their own: the pipeline's policy is the one
  in force.
- Every failure becomes a :class:`~pipeline.errors.ProviderError` with a stable ``kind``,
  the HTTP status, whether the service says it may be retried, and ``Retry-After`` when given.
- Keys travel only in request headers. Messages built here quote the service's error text,
  never a header, and a URL's query string is dropped before it is quoted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import functools
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import httpx

from pipeline.errors import ConfigError, ContentBlocked, ProviderError

DEFAULT_TIMEOUT_S = 120.0
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
_KIND_BY_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 409: "conflict",
                   413: "bad_request", 422: "bad_request", 429: "rate_limited"}


def retryable_status(code: int, headers: Mapping[str, str] | None = None) -> bool:
    """408, 409, 429 and 5xx may be retried, unless the service says ``x-should-retry: false``
    (OpenAI's hint; ``true`` forces a retry)."""
    hint = (headers or {}).get("x-should-retry", "").lower()
    if hint in ("true", "false"):
        return hint == "true"
    return code in (408, 409, 429) or code >= 500


def setting(env_var: str | None, settings: Mapping[str, Any], key: str, default: str = "") -> str:
    """An environment variable if set, else the component's configuration value, else ``default``."""
    value = os.environ.get(env_var, "") if env_var else ""
    return value or str(settings.get(key, "") or default)


def require(env_var: str, component: str) -> str:
    value = os.environ.get(env_var, "")
    if not value:
        raise ConfigError(f"{component}: set {env_var} (environment or .streamlit/secrets.toml) to use it")
    return value


def safe_url(url: str | httpx.URL) -> str:
    """A URL fit for messages and logs: scheme, host and path only."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, fragment=None))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every client, ours and the SDKs': loading the CA bundle costs ~20 ms
    of CPU, too much per call. (An SSLContext may be shared across threads and event loops.)"""
    return httpx.create_ssl_context()


def client(base_url: str = "", *, headers: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> httpx.AsyncClient:
    """A fresh client for one call (use ``async with``); redirects followed, no retries."""
    return httpx.AsyncClient(base_url=base_url, headers=dict(headers or {}), timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                             follow_redirects=True, transport=httpx.AsyncHTTPTransport(retries=0, verify=tls_context()))


def retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date), else None."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        if parsed is None:
            return None
        return max(0.0, parsed.timestamp() - (now if now is not None else time.time()))


def _snippet(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def status_error(service: str, response: httpx.Response, message: str = "", *, blocked: bool = False,
                 retryable: bool | None = None, kind: str | None = None) -> ProviderError:
    """The error for a non-success response; ``message`` is the service's own explanation if parsed."""
    code = response.status_code
    text = message or _snippet(response.text) or response.reason_phrase
    described = f"{service} answered HTTP {code}: {text}"
    if blocked:
        return ContentBlocked(described, http_status=code)
    return ProviderError(
        described, kind=kind or _KIND_BY_STATUS.get(code, "server" if code >= 500 else "bad_request"), http_status=code,
        retryable=retryable_status(code, response.headers) if retryable is None else retryable, retry_after=retry_after(response.headers),
    )


def transport_error(service: str, error: httpx.HTTPError) -> ProviderError:
    where = ""
    try:
        where = f" ({safe_url(error.request.url)})"
    except RuntimeError:  # no request attached
        pass
    if isinstance(error, httpx.TimeoutException):
        return ProviderError(f"{service} did not answer in time{where}", kind="timeout", retryable=True)
    if isinstance(error, httpx.TransportError):
        return ProviderError(f"{service} could not be reached{where}: {type(error).__name__}", kind="connection", retryable=True)
    return ProviderError(f"{service}: {type(error).__name__}{where}", kind="connection", retryable=True)


async def send(http: httpx.AsyncClient, service: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request; transport failures become :class:`ProviderError` (status codes are the caller's to judge)."""
    try:
        return await http.request(method, url, **kwargs)
    except httpx.HTTPError as e:
        raise transport_error(service, e) from None


def json_of(service: str, response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ProviderError(f"{service} sent a body that is not JSON (HTTP {response.status_code}): {_snippet(response.text, 120)!r}",
                            kind="malformed", http_status=response.status_code, retryable=True) from None


def field(service: str, data: Any, *path: str | int) -> Any:
    """``data[path[0]][path[1]]…`` or a ``malformed`` error naming the missing piece."""
    node = data
    for i, key in enumerate(path):
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{k!r}]" for k in path[: i + 1])
            raise ProviderError(f"{service} sent JSON without {where}", kind="malformed", retryable=True) from None
    return node


def b64decode(service: str, text: str) -> bytes:
    """Base64 (or a ``data:`` URI) to bytes, or a ``malformed`` error."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(f"{service} sent image data that is not valid base64", kind="malformed", retryable=True) from None


async def download(http: httpx.AsyncClient, service: str, url: str, *, max_bytes: int = MAX_DOWNLOAD_BYTES) -> tuple[bytes, str]:
    """Fetch a result image (a URL or a ``data:`` URI) with a size cap; returns (bytes, content type)."""
    if url.startswith("data:"):
        header = url[5:].partition(",")[0]
        return b64decode(service, url), header.split(";")[0]
    try:
        async with http.stream("GET", url) as response:
            if response.status_code != 200:
                await response.aread()
                raise status_error(service, response, f"downloading the image from {safe_url(url)} failed")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ProviderError(f"{service}: the image at {safe_url(url)} is over {max_bytes // 1_000_000} MB", kind="bad_image")
                chunks.append(chunk)
            return b"".join(chunks), response.headers.get("content-type", "").split(";")[0]
    except httpx.HTTPError as e:
        raise transport_error(service, e) from None


T = TypeVar("T")


async def poll_until(check: Callable[[], Awaitable[T | None]], *, deadline: float, initial_s: float, max_s: float,
                     timed_out: Callable[[], ProviderError]) -> T:
    """Call ``check`` until it returns something, waiting 1.5x longer each time (up to ``max_s``);
    ``timed_out()`` is raised when the next wait would pass ``deadline`` (a ``time.monotonic()``)."""
    delay = initial_s
    while True:
        result = await check()
        if result is not None:
            return result
        if time.monotonic() + delay > deadline:
            raise timed_out()
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, max_s)
