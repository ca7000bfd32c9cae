"""One connection pool per service per event loop, over TLS (issue 17): connections are reused
(more than one request per connection), HTTP/2 is spoken when offered and the service speaks it,
and a service that speaks only HTTP/1.1 is still served. Counts only, never timing: the loopback
TLS server's own counts of connections, requests and negotiated protocols are asserted."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.services import pools, wire
from tests.emulators.capacity import CapacityService
from tests.emulators.tls_json import TlsJsonServer, self_signed

needs_h2 = pytest.mark.skipif(importlib.util.find_spec("h2") is None, reason="HTTP/2 needs the h2 package")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key, cert = self_signed(tmp_path_factory.mktemp("tls"))
    wire.trust(str(cert))  # this test process trusts its own CA
    return key, cert


def serving(certificate: tuple[Path, Path], protocols: tuple[str, ...]) -> Iterator[TlsJsonServer]:
    server = TlsJsonServer(*certificate, protocols=protocols, delay_s=0.005).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[TlsJsonServer]:
    yield from serving(certificate, ("h2", "http/1.1"))


@pytest.fixture
def http1_only(certificate: tuple[Path, Path]) -> Iterator[TlsJsonServer]:
    yield from serving(certificate, ("http/1.1",))


async def calls(url: str, n: int, at_once: int, *, shared: bool = True) -> None:
    """``n`` calls through the pipeline's clients, ``at_once`` at a time, inside a run's pools (``shared``)."""
    guard = wire.Guard("tls-test", wire.NetworkSettings().json)
    gate = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with gate, wire.client(guard=guard, share=shared, timeout_s=10) as http:
            response = await wire.send(http, "tls-test", "GET", f"{url}/status")
            assert response.status_code == 200 and response.json()["status"] == "IN_PROGRESS"

    async def run() -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    if shared:
        async with pools.shared_connections():
            await run()
    else:
        await run()


@pytest.fixture
def http2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pools, "HTTP2", True)


@pytest.fixture(params=["aiohttp", "httpcore"])
def http1(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP/1.1 through either stack: aiohttp's pool (the default) or httpx's own (DARKROOM_HTTP_STACK=httpcore)."""
    monkeypatch.setattr(pools, "HTTP2", False)
    monkeypatch.setattr(pools, "AIOHTTP", request.param == "aiohttp")


@pytest.mark.usefixtures("http1")
def test_over_tls_a_run_reuses_its_connections_instead_of_a_handshake_per_call(tls_server: TlsJsonServer) -> None:
    opened = pools.connections_opened("tls-test")
    asyncio.run(calls(tls_server.url, 60, at_once=4))
    assert tls_server.requests == 60
    assert tls_server.connections <= 4 * pools.POOL_SHARDS  # bounded by the calls at once, not by the calls
    assert tls_server.requests / tls_server.connections > 1  # connections were reused
    assert pools.connections_opened("tls-test") - opened == tls_server.connections
    assert set(tls_server.protocols) == {"http/1.1"}  # HTTP/2 not offered unless asked for


@pytest.mark.usefixtures("http1")
def test_over_tls_each_call_outside_a_run_pays_its_own_handshake(tls_server: TlsJsonServer) -> None:
    asyncio.run(calls(tls_server.url, 10, at_once=1, shared=False))
    assert tls_server.connections == 10  # what the pool saves: a TCP and TLS handshake per call


@needs_h2
@pytest.mark.usefixtures("http2")
def test_with_http2_offered_concurrent_calls_share_a_multiplexed_connection(tls_server: TlsJsonServer) -> None:
    asyncio.run(calls(tls_server.url, 64, at_once=16))
    assert set(tls_server.protocols) == {"h2"}
    assert tls_server.connections <= pools.POOL_SHARDS  # one per shard at most, however many calls at once
    assert tls_server.requests == 64 and tls_server.requests / tls_server.connections > 1


@needs_h2
@pytest.mark.usefixtures("http2")
def test_with_http2_offered_a_service_that_speaks_only_http1_is_still_served(http1_only: TlsJsonServer) -> None:
    asyncio.run(calls(http1_only.url, 20, at_once=2))
    assert set(http1_only.protocols) == {"http/1.1"}
    assert http1_only.requests == 20 and http1_only.requests / http1_only.connections > 1


def test_the_tail_is_measured_from_the_last_moment_every_slot_was_busy() -> None:
    from tests.emulators.capacity import tail

    # 2 slots: both busy 0-4; then one job runs alone 4-10 (its 6 s could not be split)
    spans = [(0.0, 4.0), (0.0, 2.0), (2.0, 4.0), (4.0, 10.0)]
    assert tail(spans, 2) == {"actual": 6.0, "ideal": 6.0, "jobs": 1}
    # a trailing run: after both slots were last busy (until 1), 3 jobs of 1 s ran one after another
    spans = [(0.0, 1.0), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert tail(spans, 2) == {"actual": 3.0, "ideal": 1.5, "jobs": 3}  # 3 s of work for 2 slots
    assert CapacityService("sync", slots=2).served()["tail"] == {"actual": 0.0, "ideal": 0.0, "jobs": 0}


@needs_h2
def test_after_http2_calls_aiohttps_pool_still_offers_only_http1(tls_server: TlsJsonServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """httpcore rewrites the shared TLS context's ALPN list (h2 first when HTTP/2 is on); aiohttp, which
    speaks HTTP/1.1 only, has a context of its own, so a server that prefers h2 is still spoken to."""
    monkeypatch.setattr(pools, "HTTP2", True)
    asyncio.run(calls(tls_server.url, 4, at_once=2))  # through httpcore, offering h2
    monkeypatch.setattr(pools, "HTTP2", False)
    monkeypatch.setattr(pools, "AIOHTTP", True)
    tls_server.reset()
    asyncio.run(calls(tls_server.url, 8, at_once=4))
    asyncio.run(calls(tls_server.url, 4, at_once=4, shared=False))
    assert tls_server.requests == 12 and set(tls_server.protocols) == {"http/1.1"}
