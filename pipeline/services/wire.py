"""HTTP plumbing every networked provider, judge and refiner shares.

- Clients are created per call, inside the running event loop, with the component's timeout and
  no retries of their own: the pipeline's policy is the one in force. Inside a run their
  connections come from one keep-alive pool per service per event loop (:mod:`pipeline.services.pools`).
- Every failure becomes a :class:`~pipeline.errors.ProviderError` with a stable ``kind``,
  the HTTP status, whether the service says it may be retried, and ``Retry-After`` when given.
- Keys travel only in request headers, and only to the service's own origin: every client's
  transport (ours and the SDKs') strips credentials from a request to any other host, or refuses
  it (``foreign_downloads``). Messages built here quote the service's error text, never a
  header, with configured secrets redacted, and a URL's query string is dropped before it is quoted.
- Every body is read through the same transport, which stops at a cap (``[network]
  max_image_bytes`` for images, ``max_json_bytes`` for JSON, decompressed size counted): past it the
  call fails with a ``too_large`` error naming the cap, having held at most the cap in memory.
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
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

import httpx

from pipeline.config import from_table
from pipeline.errors import ConfigError, ContentBlocked, ProviderError
from pipeline.redaction import redact
from pipeline.services import pools

DEFAULT_TIMEOUT_S = 120.0
CAP_EXTENSION = "darkroom.body_cap"  # a request's own cap, in its ``extensions``
SECRET_HEADERS = ("authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie")
FOREIGN_POLICIES = ("anonymous", "refuse")
MAX_KEEPALIVE = 64  # idle connections a service's pool keeps (C = 64 is the most the benches run)
KEEPALIVE_S = 30.0  # an idle connection is dropped after this long (services close theirs after ~60 s)
_INFLATE_CHUNK = 1 << 20  # decompressed output is produced at most this much at a time
_KIND_BY_STATUS = {400: "bad_request", 401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 409: "conflict",
                   413: "bad_request", 422: "bad_request", 429: "rate_limited"}


def retryable_status(code: int, headers: Mapping[str, str] | None = None) -> bool:
    """408, 409, 429 and 5xx may be retried, unless the service says ``x-should-retry: false``
    (OpenAI's hint; ``true`` forces a retry)."""
    hint = (headers or {}).get("x-should-retry", "").lower()
    if hint in ("true", "false"):
        return hint == "true"
    return code in (408, 409, 429) or code >= 500


def kind_for_status(code: int) -> str:
    """The error ``kind`` of an HTTP status: the one table every service (and SDK wrapper) uses."""
    return _KIND_BY_STATUS.get(code, "server" if code >= 500 else "bad_request")


def error_body(response: httpx.Response) -> Any:
    """An error response's JSON body, or None when it has none (the status then speaks for itself)."""
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _error_item(item: Any) -> str:
    if isinstance(item, dict):
        text = str(item.get("message") or item.get("msg") or "")
        code = item.get("code") or item.get("type")
        return f"{text} ({code})" if text and code not in (None, "") else text
    return item if isinstance(item, str) else ""


def error_text(body: Any) -> str:
    """The service's own explanation in a JSON error body, whatever its shape, or "":
    ``{"error": {"message", "code"}}`` (OpenAI, ComfyUI), ``{"error": "..."}`` (Ollama, Leonardo,
    workers), ``{"detail": "..." | [{"msg", "type"}]}`` (fal, FastAPI), ``{"errors": [{"message",
    "code"}]}`` (Cloudflare, Runware), ``{"message": "..."}``."""
    if not isinstance(body, dict):
        return ""
    for key in ("error", "detail", "errors", "message"):
        value = body.get(key)
        text = "; ".join(t for t in map(_error_item, value) if t) if isinstance(value, list) else _error_item(value)
        if text:
            return text
    return ""


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


@functools.cache
def tls_context_http1() -> ssl.SSLContext:
    """The same trust, offering HTTP/1.1 alone (ALPN), for aiohttp's pools: httpcore rewrites the
    shared context's ALPN list at each connection (with h2 when HTTP/2 is on), and a server that then
    chose h2 would be spoken HTTP/1.1 to by aiohttp."""
    context = httpx.create_ssl_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


def trust(ca_file: str) -> None:
    """Trust the certificates in ``ca_file`` in every client of this process (a test's or bench's own CA)."""
    for context in (tls_context(), tls_context_http1()):
        context.load_verify_locations(ca_file)


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: the services' APIs are keyed by headers, and a cookie one sets is
    neither wanted nor sent back. (httpx reads every answer's Set-Cookie into its jar otherwise: ~0.09 ms of
    CPU a request, on the several requests of every image.)"""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class ServiceClient(httpx.AsyncClient):
    """httpx's client for a service's calls: its guarded transport at hand for :class:`Repeat`, no cookie jar."""

    def __init__(self, *, guarded: Any, **kwargs: Any) -> None:
        self._no_cookies = _NoCookies()
        super().__init__(transport=guarded, **kwargs)
        self.guarded = guarded

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:  # the jar stays empty
        pass


def client(base_url: str = "", *, headers: Mapping[str, str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
           guard: Guard | None = None, share: bool = False) -> ServiceClient:
    """A client for one call (use ``async with``); redirects followed, no retries, every body
    capped and credentials kept to the service's origins by ``guard`` (default: the JSON cap).
    ``share``: its connections come from the service's pool (:func:`pools.shared_connections`)."""
    guard = guard or Guard("the service", NetworkSettings().json)
    return ServiceClient(base_url=base_url, headers=dict(headers or {}), timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
                         follow_redirects=True, guarded=guarded_transport(guard, share=share))


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
    """Service text fit to quote: secrets redacted first (a cut must not leave half a key), one line, at most ``limit``."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[:limit] + "…"


# ---- body caps and the credentials guard ----------------------------------------------------------
def _size(n: int) -> str:
    """50 MB, 1.4 MB, 2,000 MB, 200 kB."""
    value, unit = (n / 1e6, "MB") if n >= 1_000_000 else (n / 1e3, "kB")
    return f"{value:,.1f}".removesuffix(".0") + f" {unit}"


@dataclass(frozen=True)
class BodyCap:
    """The most a body may hold, and how to name the limit in an error."""

    max_bytes: int
    what: str  # "an image", "a JSON answer", ...
    setting: str  # the configuration key that sets it

    def exceeded(self, service: str, url: str, declared: int | None = None) -> ProviderError:
        says = f" says it is {_size(declared)}," if declared is not None else " is"
        return ProviderError(f"{service}: the answer from {safe_url(url)}{says} over the {_size(self.max_bytes)} cap for {self.what} "
                             f"([network] {self.setting})", kind="too_large", retryable=False)

    def extension(self) -> dict[str, Any]:
        """``extensions=`` for one request that has this cap instead of its client's."""
        return {CAP_EXTENSION: self}


@dataclass(frozen=True)
class NetworkSettings:
    """``[network]`` (a service's own table may override any key): body caps and where keys may go."""

    max_image_bytes: int = 50_000_000
    max_json_bytes: int = 8_000_000
    foreign_downloads: str = "anonymous"  # a URL on another host: fetched without credentials, or "refuse"d
    trusted_hosts: tuple[str, ...] = ()  # other hosts that are the service's own (credentials sent)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "NetworkSettings":
        network = from_table(cls, values)
        if network.foreign_downloads not in FOREIGN_POLICIES:
            raise ConfigError(f"foreign_downloads must be one of {', '.join(FOREIGN_POLICIES)}, not {network.foreign_downloads!r}")
        if network.max_image_bytes < 1 or network.max_json_bytes < 1:
            raise ConfigError("max_image_bytes and max_json_bytes must be positive")
        return network

    @property
    def image(self) -> BodyCap:
        return BodyCap(self.max_image_bytes, "an image", "max_image_bytes")

    @property
    def json(self) -> BodyCap:
        return BodyCap(self.max_json_bytes, "a JSON answer", "max_json_bytes")

    @property
    def image_json(self) -> BodyCap:
        """A JSON answer carrying an image in base64 (4/3 of its size) besides the usual JSON."""
        return BodyCap(self.max_image_bytes * 4 // 3 + self.max_json_bytes, "an image sent as base64 JSON", "max_image_bytes")


Origin = tuple[str, str, int]


def origin(url: str | Any) -> Origin:
    """(scheme, host, port) with the default port filled in: credentials go to exact origins only."""
    u = url if isinstance(url, httpx.URL) else httpx.URL(str(url))  # a request's URL is parsed already
    return u.scheme, u.host, u.port or (443 if u.scheme == "https" else 80)


@dataclass(frozen=True)
class Guard:
    """What a client's transport enforces: the default body cap, and which origins get credentials
    (None: any, for clients that carry none)."""

    service: str
    cap: BodyCap
    own: frozenset[Origin] | None = None
    foreign: str = "anonymous"

    def admit(self, request: Any) -> None:
        """Strip credentials from a request to a foreign origin, or refuse it (configuration, or not a plain GET)."""
        if self.own is None or origin(request.url) in self.own:
            return
        if self.foreign == "refuse" or request.method not in ("GET", "HEAD"):
            raise ProviderError(f"{self.service}: refused to send a request to {safe_url(str(request.url))}, which is not the service's "
                                f"own host ({', '.join(sorted(h for _, h, _ in self.own))}); see foreign_downloads and trusted_hosts "
                                f"in [providers.{self.service}]", kind="refused", retryable=False)
        for name in SECRET_HEADERS:
            request.headers.pop(name, None)


class _Inflater:
    """gzip/deflate decoding that never produces more than ``_INFLATE_CHUNK`` at a time (a small
    compressed body may expand a thousandfold: its decoded size is what counts against the cap)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        self.first = True

    def feed(self, data: bytes) -> Iterator[bytes]:
        while data:
            try:
                out = self.decoder.decompress(data, _INFLATE_CHUNK)
            except zlib.error:
                if not (self.first and self.encoding == "deflate"):
                    raise
                self.decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as some servers send it
                out = self.decoder.decompress(data, _INFLATE_CHUNK)
            self.first = False
            data = self.decoder.unconsumed_tail
            if out:
                yield out


@functools.cache
def _guard_classes(module: ModuleType) -> type:
    """The guarding transport for ``module`` (httpx, or httpx2 which the OpenAI SDK uses)."""

    class CappedStream(module.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, raw: Any, cap: BodyCap, service: str, url: str, encoding: str) -> None:
            self.raw, self.cap, self.service, self.url, self.encoding = raw, cap, service, url, encoding

        async def __aiter__(self) -> AsyncIterator[bytes]:
            inflater = _Inflater(self.encoding) if self.encoding != "identity" else None
            size = 0
            async for chunk in self.raw:
                for piece in self._decoded(chunk, inflater):  # piece by piece: a bomb is stopped at the cap, not after
                    size += len(piece)
                    if size > self.cap.max_bytes:
                        raise self.cap.exceeded(self.service, self.url)
                    yield piece

        def _decoded(self, chunk: bytes, inflater: _Inflater | None) -> Iterator[bytes]:
            if inflater is None:
                yield chunk
                return
            try:
                yield from inflater.feed(chunk)
            except zlib.error:
                raise ProviderError(f"{self.service}: the answer from {safe_url(self.url)} is not valid {self.encoding} data",
                                    kind="malformed", retryable=True) from None

        async def aclose(self) -> None:
            await self.raw.aclose()

    class GuardedTransport(module.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        def __init__(self, inner: Any, guard: Guard, owned: bool = True) -> None:
            self.inner, self.guard, self.owned = inner, guard, owned

        async def handle_async_request(self, request: Any) -> Any:
            self.guard.admit(request)
            request.headers["Accept-Encoding"] = "gzip, deflate"  # what we can decode within the cap
            response = await self.inner.handle_async_request(request)
            cap: BodyCap = request.extensions.get(CAP_EXTENSION) or self.guard.cap
            url = str(request.url)
            encoding = response.headers.get("content-encoding", "").strip().lower() or "identity"
            declared = response.headers.get("content-length", "")
            problem = None
            if encoding not in ("identity", "gzip", "deflate"):
                problem = ProviderError(f"{self.guard.service}: the answer from {safe_url(url)} uses the content encoding {encoding!r}, "
                                        "which was not asked for", kind="malformed", retryable=True)
            elif encoding == "identity" and declared.isdigit() and int(declared) > cap.max_bytes:
                problem = cap.exceeded(self.guard.service, url, int(declared))
            if problem is not None:
                await response.aclose()
                raise problem
            headers = response.headers
            if encoding != "identity":  # handed over decoded: the client must not decode again
                headers = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
            return module.Response(response.status_code, headers=headers, stream=CappedStream(response.stream, cap, self.guard.service, url, encoding),
                                   extensions=response.extensions)

        async def aclose(self) -> None:
            if self.owned:  # a shared pool outlives the client: pools.shared_connections closes it
                await self.inner.aclose()

    return GuardedTransport


def guarded_transport(guard: Guard, module: ModuleType = httpx, *, share: bool = True) -> Any:
    """A connection pool for ``module``'s clients (no retries, the shared TLS context, keep-alive)
    behind ``guard``: the service's shared pool on this event loop inside
    :func:`pools.shared_connections` (``share``), else one of the client's own."""
    def make() -> Any:
        if module is httpx and pools.AIOHTTP and not pools.HTTP2:  # our own services: aiohttp's pool and parser (less CPU)
            from pipeline.services.aio import AiohttpTransport  # here: aiohttp is 0.1 s of CPU to import, kept off the start-up

            return AiohttpTransport(tls_context_http1(), KEEPALIVE_S, functools.partial(pools.count_opened, guard.service))
        limits = module.Limits(max_connections=None, max_keepalive_connections=MAX_KEEPALIVE, keepalive_expiry=KEEPALIVE_S)
        return pools.counted(module.AsyncHTTPTransport(retries=0, verify=tls_context(), limits=limits), guard.service)

    pool = pools.shared(guard.service, module.__name__, make) if share else None
    return _guard_classes(module)(pool or make(), guard, owned=pool is None)


def provider_error_in(error: BaseException) -> ProviderError | None:
    """The :class:`ProviderError` an SDK wrapped (a cap or guard refusal raised inside its transport), if any."""
    seen: set[int] = set()
    node: BaseException | None = error
    while node is not None and id(node) not in seen:
        if isinstance(node, ProviderError):
            return node
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return None


def status_error(service: str, response: httpx.Response, message: str = "", *, blocked: bool = False,
                 retryable: bool | None = None, kind: str | None = None) -> ProviderError:
    """The error for a non-success response; ``message`` is the service's own explanation if parsed."""
    code = response.status_code
    text = message or _snippet(response.text) or response.reason_phrase
    described = f"{service} answered HTTP {code}: {text}"
    if blocked:
        return ContentBlocked(described, http_status=code)
    return ProviderError(
        described, kind=kind or kind_for_status(code), http_status=code,
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


class Repeat:
    """A GET built once and sent again and again: a job's status, polled several times an image.

    It goes straight to the client's guarded transport, so each poll skips what httpx's client does
    per request: merging the URL, headers and cookies, and following redirects (~0.23 of a poll's
    ~0.49 ms of CPU, measured against a loopback server). The guard (credentials, body cap,
    encodings) and the timeouts are the client's own, as for any request. An answer that redirects
    (3xx with a Location) is sent again the full way, which follows it; so is every poll from a
    client that is not a :class:`ServiceClient` (a test's own)."""

    def __init__(self, http: httpx.AsyncClient, service: str, url: str) -> None:
        self.http, self.service, self.url = http, service, url
        self.request = http.build_request("GET", url)
        self.transport = http.guarded if isinstance(http, ServiceClient) else None

    async def send(self) -> httpx.Response:
        """The answer, read (within the guard's cap); transport failures become :class:`ProviderError`."""
        if self.transport is None:
            return await send(self.http, self.service, "GET", self.url)
        try:
            response: httpx.Response = await self.transport.handle_async_request(self.request)
            response.request = self.request
            try:
                await response.aread()
            except BaseException:  # a cap passed, a cancellation: the connection is not left half-read
                await response.aclose()
                raise
        except httpx.HTTPError as e:
            raise transport_error(self.service, e) from None
        if response.is_redirect:  # followed by the client (its rules, its limit)
            return await send(self.http, self.service, "GET", self.url)
        return response


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


def b64decode(service: str, text: str, cap: BodyCap | None = None) -> bytes:
    """Base64 (or a ``data:`` URI) to bytes, or a ``malformed`` error; ``too_large`` past ``cap``."""
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if cap is not None and len(text) // 4 * 3 > cap.max_bytes:
        raise ProviderError(f"{service}: the base64 image is over the {_size(cap.max_bytes)} cap for {cap.what} ([network] {cap.setting})",
                            kind="too_large", retryable=False)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(f"{service} sent image data that is not valid base64", kind="malformed", retryable=True) from None


def check_size(service: str, data: bytes, cap: BodyCap) -> bytes:
    """``data`` if within ``cap`` (an image read under a larger cap, e.g. one that may also be JSON)."""
    if len(data) > cap.max_bytes:
        raise ProviderError(f"{service}: the image is {_size(len(data))}, over the {_size(cap.max_bytes)} cap for {cap.what} "
                            f"([network] {cap.setting})", kind="too_large", retryable=False)
    return data


async def download(http: httpx.AsyncClient, service: str, url: str, cap: BodyCap) -> tuple[bytes, str]:
    """Fetch a result image (a URL or a ``data:`` URI) within ``cap``; returns (bytes, content type).
    The client's guard strips the key, or refuses, when the URL is on another host."""
    if url.startswith("data:"):
        header = url[5:].partition(",")[0]
        return b64decode(service, url, cap), header.split(";")[0]
    try:
        async with http.stream("GET", url, extensions=cap.extension()) as response:
            if response.status_code != 200:
                await response.aread()
                raise status_error(service, response, f"downloading the image from {safe_url(url)} failed")
            return await response.aread(), response.headers.get("content-type", "").split(";")[0]
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
