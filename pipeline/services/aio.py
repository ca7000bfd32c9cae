"""An httpx transport over aiohttp's client: the connection pool and HTTP/1.1 parser behind the
calls of Darkroom's own service modules (the SDKs keep their own stacks).

Why: on a polled service every image is several requests (submit, polls, result, download), and at
C = 64 the pipeline's one core is the limit (bench/throughput.py). httpcore's pool and h11's
pure-Python parser cost 1.3-1.6 times the CPU per request of aiohttp's pool and C parser under the
same httpx request and response objects, over TLS (``python bench/connections.py``, the "pooled"
rows), and more with many connections in one pool. httpx stays the interface: the guard in front
(:mod:`pipeline.services.wire`: caps, encodings, credentials) and every caller are unchanged.
``DARKROOM_HTTP_STACK=httpcore`` (:data:`pools.AIOHTTP`) turns it off.

Failures are raised as the httpx exceptions httpcore raises for the same event, so
:func:`pipeline.services.wire.transport_error` tells them apart as before::

    what aiohttp raises                                       raised as (httpx)
    ├── ConnectionTimeoutError (no connection in time)        ConnectTimeout   ┐
    ├── SocketTimeoutError, ServerTimeoutError (no bytes)     ReadTimeout      ┘ TimeoutException: kind "timeout"
    ├── ClientConnectorError (DNS, refused, TLS handshake)    ConnectError     ┐
    ├── ServerDisconnectedError, ClientPayloadError,          RemoteProtocolError │ TransportError: kind "connection"
    │   ClientResponseError (a malformed answer)                                │
    └── any other ClientError or OSError                      ReadError        ┘
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx

CHUNK_BYTES = 64 * 1024  # a response body is handed on in pieces of at most this size


def _as_httpx(error: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception httpcore raises for the failure aiohttp reported as ``error``."""
    message = str(error) or type(error).__name__
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(message, request=request)
    if isinstance(error, (aiohttp.SocketTimeoutError, aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(error, aiohttp.ClientConnectorError):
        return httpx.ConnectError(message, request=request)
    if isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientResponseError)):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)


class _Body(httpx.AsyncByteStream):
    """A response's body, read from aiohttp in pieces; closing it hands the connection back (or drops it, unread)."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response, self._request = response, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._response.content.iter_chunked(CHUNK_BYTES):
                yield piece
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise _as_httpx(e, self._request) from e

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One keep-alive pool (an aiohttp session, made in the event loop of its first request).

    ``opened`` is called once per TCP connection made (the benches' and tests' count)."""

    def __init__(self, tls: ssl.SSLContext, keepalive_s: float, opened: Callable[[], None]) -> None:
        self._tls, self._keepalive_s, self._opened = tls, keepalive_s, opened
        self._session: aiohttp.ClientSession | None = None
        self._proxies = urllib.request.getproxies_environment()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            trace = aiohttp.TraceConfig()

            async def counted(*_: Any) -> None:
                self._opened()

            trace.on_connection_create_end.append(counted)
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=self._keepalive_s, ssl=self._tls)
            # Not trust_env: aiohttp then reads the proxy variables and ~/.netrc again for every request, on a
            # thread (~10 % of a run's CPU); the proxies are read once, in __init__. Headers and decoding are
            # left to httpx and the guard.
            self._session = aiohttp.ClientSession(connector=connector, trace_configs=[trace], auto_decompress=False,
                                                  skip_auto_headers=("User-Agent", "Accept-Encoding"))
        return self._session

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy for ``url`` from HTTP_PROXY / HTTPS_PROXY / NO_PROXY, as httpx reads them."""
        proxy = self._proxies.get(url.scheme)
        if proxy is None or urllib.request.proxy_bypass_environment(url.host, self._proxies):  # type: ignore[attr-defined]  # (not in typeshed)
            return None
        return proxy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout") or {}
        body = await request.aread()  # bounded by the caller (a prompt, a reference image); sent with its length
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "transfer-encoding"]
        try:
            response = await self._client().request(
                request.method, str(request.url), headers=headers, data=body or None, allow_redirects=False, proxy=self._proxy_for(request.url),
                compress=False, timeout=aiohttp.ClientTimeout(total=None, connect=timeout.get("pool"),
                                                              sock_connect=timeout.get("connect"), sock_read=timeout.get("read")))
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            raise _as_httpx(e, request) from e
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode("latin-1", "replace")
        return httpx.Response(response.status, headers=response.raw_headers, stream=_Body(response, request),
                              request=request, extensions=extensions)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
