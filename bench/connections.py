"""Benchmark: what one connection pool per service saves, against a loopback TLS server (issue 17).

    python bench/connections.py [--requests 300] [--concurrent 16]

A loopback TLS server (tests/emulators/tls_json.py: a self-signed certificate for 127.0.0.1 made
here, trusted by the shared TLS context for this process only; HTTP/2 by ALPN, and HTTP/1.1 with
keep-alive) answers a small JSON body. The same requests go through the pipeline's own clients
(``pipeline.services.wire``):

- per call: a client and its connections made for each call and closed after it (outside a run):
  a TCP and a TLS handshake every time;
- pooled HTTP/1.1: inside ``pools.shared_connections()`` (what a run holds), every call's client
  draws on the service's keep-alive pool, HTTP/2 not offered: aiohttp's pool and parser under
  httpx (pipeline/services/aio.py), the default;
- pooled httpcore: the same through httpx's own pool (httpcore and h11), ``DARKROOM_HTTP_STACK=httpcore``;
- pooled HTTP/2: the same, HTTP/2 offered (``pools.HTTP2``; ``DARKROOM_HTTP2=1`` in a run), when
  the h2 package is installed: one multiplexed connection per pool shard.

Each is run sequentially (``--requests`` one after another) and ``--concurrent`` at a time (as a
run's polls are). Printed: wall ms per request, client CPU ms per request, TCP connections the
server accepted, requests per connection, the protocol spoken. The loopback round trip is ~0.1 ms,
so the differences are the handshakes' and the protocols' CPU; a real service adds one network
round trip for TCP and one or two for TLS on top, per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators.tls_json import TlsJsonServer, self_signed  # noqa: E402


async def calls(url: str, n: int, pooled: bool, concurrent: int) -> tuple[float, float]:
    from pipeline.services import pools, wire

    guard = wire.Guard("bench", wire.NetworkSettings().json)

    async def one() -> None:
        async with wire.client(guard=guard, share=pooled, timeout_s=10) as http:
            response = await wire.send(http, "bench", "GET", f"{url}/status")
            response.raise_for_status()

    async def run() -> None:
        if concurrent <= 1:
            for _ in range(n):
                await one()
            return
        gate = asyncio.Semaphore(concurrent)

        async def gated() -> None:
            async with gate:
                await one()

        async with asyncio.TaskGroup() as group:
            for _ in range(n):
                group.create_task(gated())

    wall, cpu = time.perf_counter(), time.process_time()
    if pooled:
        async with pools.shared_connections():
            await run()
    else:
        await run()
    return (time.perf_counter() - wall) * 1000 / n, (time.process_time() - cpu) * 1000 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=16, help="requests at once in the concurrent rows")
    args = parser.parse_args()
    from pipeline.services import pools, wire

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-connections-", dir=os.environ.get("BENCH_TMP")))
    key, cert = self_signed(tmp)
    wire.trust(str(cert))  # this process only: the bench's own CA
    server = TlsJsonServer(key, cert).start()
    h2 = importlib.util.find_spec("h2") is not None
    print(f"{args.requests} requests per row over TLS (loopback); h2 installed: {h2}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'clients':18} {'at once':>7} {'wall ms/req':>11} {'CPU ms/req':>10} {'connections':>11} {'req/conn':>8}  protocol")
    results = {}
    modes = [("per call", False, False, True), ("pooled HTTP/1.1", True, False, True), ("pooled httpcore", True, False, False)]
    modes += [("pooled HTTP/2", True, True, False)] if h2 else []
    default = pools.HTTP2, pools.AIOHTTP
    try:
        for at_once in (1, args.concurrent):
            for label, pooled, http2, aiohttp in modes:
                pools.HTTP2, pools.AIOHTTP = http2, aiohttp
                asyncio.run(calls(server.url, 5, pooled, 1))  # warm up (imports, first handshake)
                server.reset()
                wall, cpu = asyncio.run(calls(server.url, args.requests, pooled, at_once))
                results[(label, at_once)] = (wall, cpu)
                spoken = ", ".join(f"{p} x{n}" for p, n in server.protocols.items())
                print(f"{label:18} {at_once:7d} {wall:11.2f} {cpu:10.2f} {server.connections:11d} "
                      f"{server.requests / max(1, server.connections):8.1f}  {spoken}", flush=True)
    finally:
        pools.HTTP2, pools.AIOHTTP = default
        server.stop()
    for at_once in (1, args.concurrent):
        (w0, c0), (w1, c1) = results[("per call", at_once)], results[("pooled HTTP/1.1", at_once)]
        core = results[("pooled httpcore", at_once)][1]
        print(f"{at_once} at once: the pool saves {w0 - w1:.2f} ms wall and {c0 - c1:.2f} ms of client CPU per request; "
              f"aiohttp's pool {c1:.2f} ms CPU against httpcore's {core:.2f} ms ({core / c1:.1f}x)"
              + (f"; HTTP/2 against HTTP/1.1 pooled: {results[('pooled HTTP/2', at_once)][0] - w1:+.2f} ms wall, "
                 f"{results[('pooled HTTP/2', at_once)][1] - c1:+.2f} ms CPU" if h2 else ""))


if __name__ == "__main__":
    main()
