"""Benchmark: what one connection pool per service saves, against a loopback TLS server (issue 17).

    python bench/connections.py [--requests 300]

A loopback emulator behind TLS (a self-signed certificate for 127.0.0.1 made here, trusted by the
shared TLS context for this process only) answers a small JSON body. The same sequential requests
go through the pipeline's own clients (``pipeline.services.wire``):

- per call: a client and its connections made for each call and closed after it (the old way, and
  still the way outside a run): a TCP and a TLS handshake every time;
- pooled: inside ``pools.shared_connections()`` (what a run holds), every call's client draws on
  the service's one keep-alive pool.

Printed for each, over TLS and plain HTTP: wall ms per request, client CPU ms per request, TCP
connections the server accepted, requests per connection. The loopback round trip is ~0.1 ms, so
the difference is the handshakes' CPU; a real service adds one network round trip for TCP and one
or two for TLS on top, per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.emulators import Emulator, Reply, Request  # noqa: E402


class Tiny(Emulator):
    def handle(self, req: Request) -> Reply:
        return Reply.json({"status": "IN_PROGRESS", "queue_position": 0})


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1 (its own CA), as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "darkroom bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def serve(tls: tuple[Path, Path] | None) -> Tiny:
    emulator = Tiny()
    emulator.start()
    if tls is not None:
        server = emulator._server
        assert server is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls[1]), str(tls[0]))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        emulator.url = emulator.url.replace("http://", "https://")
    return emulator


async def calls(url: str, n: int, pooled: bool) -> tuple[float, float]:
    from pipeline.services import pools, wire

    guard = wire.Guard("bench", wire.NetworkSettings().json)

    async def run() -> None:
        for _ in range(n):
            async with wire.client(guard=guard, share=pooled, timeout_s=10) as http:
                response = await wire.send(http, "bench", "GET", f"{url}/status")
                response.raise_for_status()

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
    args = parser.parse_args()
    from pipeline.services import wire

    tmp = Path(tempfile.mkdtemp(prefix="darkroom-connections-", dir=os.environ.get("BENCH_TMP")))
    key, cert = self_signed(tmp)
    wire.tls_context().load_verify_locations(str(cert))  # this process only: the bench's own CA
    print(f"{args.requests} sequential requests each; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':7} {'clients':9} {'wall ms/req':>11} {'CPU ms/req':>10} {'connections':>11} {'req/conn':>8}")
    results = {}
    for scheme, tls in (("https", (key, cert)), ("http", None)):
        for pooled in (False, True):
            emulator = serve(tls)
            try:
                asyncio.run(calls(emulator.url, 5, pooled))  # warm up (imports, first handshake)
                emulator.connections, emulator.requests[:] = 0, []
                wall, cpu = asyncio.run(calls(emulator.url, args.requests, pooled))
                conns = emulator.connections
            finally:
                emulator.stop()
            results[(scheme, pooled)] = (wall, cpu)
            print(f"{scheme:7} {'pooled' if pooled else 'per call':9} {wall:11.2f} {cpu:10.2f} {conns:11d} {args.requests / max(1, conns):8.1f}")
    for scheme in ("https", "http"):
        (w0, c0), (w1, c1) = results[(scheme, False)], results[(scheme, True)]
        print(f"{scheme}: the pool saves {w0 - w1:.2f} ms wall and {c0 - c1:.2f} ms of client CPU per request on loopback")


if __name__ == "__main__":
    main()
