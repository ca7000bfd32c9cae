"""Connection pools shared by a service's calls: one pool per service per event loop.

A client made per call pays a TCP (and TLS) handshake per call; a real service answers the next
call sooner on a warm connection. Inside :func:`shared_connections` (a run holds it for its whole
life), every call to the same service on this event loop goes through one pool with keep-alive;
the pools are closed when the block ends, inside the loop that opened them. Outside such a block
a call gets a pool of its own, closed with its client (a probe, a one-off request).

Pools are never shared across event loops (an asyncio connection belongs to its loop), and the
counts of connections opened are kept per service for the benches and tests. A service's pool is
split in :data:`POOL_SHARDS`, each prompt worker keeping to one, because httpcore's pool costs
CPU in proportion to its connections times its waiting requests.

Darkroom's own service modules use aiohttp's pool and HTTP/1.1 parser under httpx's interface
(:mod:`pipeline.services.aio`, :data:`AIOHTTP`): 1.3-1.6x less CPU per request than httpcore's. The SDKs
keep their own httpx stacks (httpcore), which the rest of this module serves.

HTTP/2 is offered (ALPN) on every TLS connection when ``DARKROOM_HTTP2=1`` and the ``h2`` package
is installed (:data:`HTTP2`): a service that speaks it carries a shard's concurrent calls on one
multiplexed connection; one that does not answers HTTP/1.1 on the same pool. It is off by default
because it did not pay (bench/connections.py, loopback TLS): once connections are pooled there are
no handshakes left to save, and h2's framing cost +0.2–0.4 ms of client CPU per request over h11's.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import os
import threading
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

POOL_SHARDS = 16  # a service's pool is split in this many, a prompt worker (task) keeping to one: httpcore rescans every
# connection of a pool for each queued request, so one pool of 40 connections took ~26 % of a run's CPU at C = 32 (profiled);
# 16 rather than 8: at C = 64 (128 workers) a shard of 8 still held ~10 connections, each asked whether it is readable (a
# poll(2)) at every request (bench/throughput.py, model b at C = 64: ~2-3 ms less CPU per image with 16 or 32 shards;
# 32 also opens a connection per call where each call is its own task, as in tests/test_pools.py)
_pools: dict[asyncio.AbstractEventLoop, dict[tuple[str, str, int], Any]] = {}
_shard_of: weakref.WeakKeyDictionary[asyncio.Task[Any], int] = weakref.WeakKeyDictionary()
_turns = itertools.count()
_opened: Counter[str] = Counter()
_lock = threading.Lock()  # runs on several threads' loops may open connections at once
HTTP2 = os.environ.get("DARKROOM_HTTP2", "") == "1" and importlib.util.find_spec("h2") is not None  # offer HTTP/2 by ALPN
# Darkroom's own service modules speak HTTP/1.1 through aiohttp's pool and parser (pipeline.services.aio);
# DARKROOM_HTTP_STACK=httpcore goes back to httpx's own (httpcore and h11), as HTTP/2 does.
AIOHTTP = os.environ.get("DARKROOM_HTTP_STACK", "aiohttp") != "httpcore"


def connections_opened(service: str | None = None) -> int:
    """TCP connections opened so far by ``service``'s clients (every service's when None)."""
    with _lock:
        return _opened[service] if service is not None else sum(_opened.values())


def count_opened(service: str) -> None:
    """One more TCP connection opened by ``service``'s clients."""
    with _lock:
        _opened[service] += 1


class _Stream:
    """A connection whose socket is looked up once. httpcore asks each pooled connection whether
    it is readable (closed by the server) before reusing it, and anyio answers by building every
    attribute of the socket, ``getpeername`` included: ~7 % of a run's CPU at C = 8 (profiled)."""

    def __init__(self, inner: Any, readable: Callable[[Any], bool]) -> None:
        self._inner, self._readable = inner, readable
        self._socket = inner.get_extra_info("socket")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._socket is not None:
            return self._readable(self._socket)
        return self._inner.get_extra_info(info)

    async def start_tls(self, *args: Any, **kwargs: Any) -> Any:
        return _Stream(await self._inner.start_tls(*args, **kwargs), self._readable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _CountingBackend:
    """A network backend (httpcore's) that counts the connections it opens for one service."""

    def __init__(self, inner: Any, service: str, readable: Callable[[Any], bool]) -> None:
        self._inner, self._service, self._readable = inner, service, readable

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        stream = await self._inner.connect_tcp(*args, **kwargs)
        count_opened(self._service)
        return _Stream(stream, self._readable)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def counted(transport: Any, service: str) -> Any:
    """``transport`` (an httpx or httpx2 ``AsyncHTTPTransport``) with its connections counted, and
    HTTP/2 offered when :data:`HTTP2`. (httpx has no public hook for the network backend: its pool's
    attribute is wrapped; its connections are made lazily, so the pool's ``_http2`` still applies.)"""
    pool = transport._pool
    pool._http2 = pool._http2 or HTTP2
    readable = importlib.import_module(f"{type(pool).__module__.split('.')[0]}._utils").is_socket_readable  # httpcore's or httpcore2's
    pool._network_backend = _CountingBackend(pool._network_backend, service, readable)
    return transport


def shared(service: str, module: str, make: Callable[[], Any]) -> Any | None:
    """This loop's pool for ``service`` (``module``: httpx or httpx2, whose pools differ), made by
    ``make`` the first time; None outside :func:`shared_connections` (the caller makes its own)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    pools = _pools.get(loop)
    if pools is None:
        return None
    key = (service, module, _shard())
    if key not in pools:
        pools[key] = make()
    return pools[key]


def _shard() -> int:
    """The current task's share of a service's pool (tasks take turns; calls of one task keep to one)."""
    task = asyncio.current_task()
    if task is None:
        return 0
    shard = _shard_of.get(task)
    if shard is None:
        shard = _shard_of[task] = next(_turns) % POOL_SHARDS
    return shard


@asynccontextmanager
async def shared_connections() -> AsyncIterator[None]:
    """Within this block, each service's calls on this event loop share one pool (nested blocks
    share the outer one); the pools close when the outermost block ends."""
    loop = asyncio.get_running_loop()
    if loop in _pools:
        yield
        return
    _pools[loop] = {}
    try:
        yield
    finally:
        pools = _pools.pop(loop)
        for pool in pools.values():
            await pool.aclose()
