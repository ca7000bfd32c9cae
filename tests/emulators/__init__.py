"""Loopback emulators: real HTTP servers on 127.0.0.1 speaking each service's documented wire format.

Each emulator records every request it receives (so tests can count calls and inspect what was
sent) and can be told to misbehave in the ways the contract tests need. ``fault`` names one of
:data:`FAULTS`; each emulator answers it in its own service's shape.

:data:`HOSTILE` are the faults of a hostile service (tests/test_hostile_providers.py, bench/hostile_bodies.py):

- ``trickle``: every answer is sent one byte per ``trickle_s`` after the headers (defeats per-read timeouts);
- ``huge``: the image is ``huge_bytes`` long (JSON services: a base64 string that long), generated on the fly;
- ``huge_json``: every JSON answer is padded to ``huge_bytes``, streamed without a Content-Length;
- ``truncated_jpeg``: the image is a JPEG cut off in its scan data (opens and verifies, cannot be decoded);
- ``echo_key``: a 401 whose message quotes the credential the request carried;
- ``foreign_url``: the result URL names ``foreign_host`` (another emulator, on 127.0.0.2), not the service.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

FAULTS = ("ok", "400", "401", "429", "500", "timeout", "malformed", "blocked", "not_image", "oversized")
HOSTILE = ("trickle", "huge", "huge_json", "truncated_jpeg", "echo_key", "foreign_url")
RETRY_AFTER_S = 7
CHUNK = 1 << 20  # streamed bodies go out in 1 MiB writes
SLOW_S = 1.5  # longer than the contract tests' client timeout


@lru_cache(maxsize=8)
def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


@lru_cache(maxsize=1)
def bomb_png(side: int = 10_000) -> bytes:
    """A small file that decodes to 100 million pixels (a decompression bomb). Written by hand:
    Pillow takes most of a second to encode it, longer than the contract tests' timeout."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"\0" * ((1 + (side + 7) // 8) * side)  # filter byte + 1-bit pixels, all black
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


@lru_cache(maxsize=1)
def truncated_jpeg() -> bytes:
    """A JPEG cut off in its scan data: Pillow opens and verifies it, decoding fails."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((640, 480)).convert("RGB").save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    return data[: len(data) * 6 // 10]


def filler(size: int, head: bytes = b"", byte: bytes = b"A") -> Callable[[], Iterator[bytes]]:
    """``head`` then ``byte`` repeated up to ``size`` bytes in all, made on the fly (never held whole)."""
    block = byte * CHUNK

    def chunks() -> Iterator[bytes]:
        yield head
        left = size - len(head)
        while left > 0:
            yield block[: min(left, CHUNK)]
            left -= CHUNK
    return chunks


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    stream: Callable[[], Iterator[bytes]] | None = None  # a body made while it is sent (``body`` is then unused)
    length: int | None = None  # the Content-Length sent with ``stream``; None: chunked, no length
    trickle_s: float = 0.0  # send the body one byte at a time, this long apart

    @classmethod
    def json(cls, payload: Any, status: int = 200, **headers: str) -> "Reply":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})

    @classmethod
    def huge_json(cls, prefix: str, size: int, suffix: str, status: int = 200) -> "Reply":
        """``prefix`` + ``"A"`` x ``size`` (valid base64 for zero bytes) + ``suffix``, streamed with no Content-Length."""
        def chunks() -> Iterator[bytes]:
            yield prefix.encode()
            yield from filler(size)()
            yield suffix.encode()
        return cls(status, headers={"Content-Type": "application/json"}, stream=chunks)

    def padded(self, size: int) -> "Reply":
        """This JSON object answer with a ``padding`` string making it ``size`` bytes long (streamed)."""
        text = self.body if isinstance(self.body, (dict, list)) else json.loads(self.body or b"null")
        if not isinstance(text, dict):
            return self
        head = json.dumps(text)[:-1] + (', ' if text else '') + '"padding": "'
        return Reply.huge_json(head, size, '"}', self.status)


class Emulator:
    """Subclasses implement :meth:`handle`; ``fault`` selects a misbehaviour (``"ok"`` = none).

    ``plan``, when set, picks the fault for each request instead (fault-injection storms); the
    fault each request got is kept in ``served_faults``.
    """

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._fault = "ok"
        self._current = threading.local()
        self.plan: Callable[[Request], str] | None = None
        self.served_faults: list[str] = []
        self.latency_s = 0.0  # added to every answer (a slow service)
        self.slow_s = SLOW_S  # how long a "timeout" answer is held back
        self.trickle_s = 0.5  # the gap between bytes under the "trickle" fault
        self.huge_bytes = 8 * CHUNK  # the body size under "huge" and "huge_json"
        self.declare_length = False  # "huge" images say their Content-Length up front (else chunked, no length)
        self.foreign_host = ""  # the base URL "foreign_url" results point at
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        self.url = ""
        self.connections = 0  # TCP connections accepted (keep-alive: one carries many requests)

    @property
    def fault(self) -> str:
        return getattr(self._current, "fault", None) or self._fault

    @fault.setter
    def fault(self, value: str) -> None:
        self._fault = value

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1") -> "Emulator":
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: Nagle would add ~40 ms

            def setup(self) -> None:
                super().setup()
                with emulator.lock:
                    emulator.connections += 1

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = Request(self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()},
                              self.rfile.read(length) if length else b"")
                with emulator.lock:
                    emulator.requests.append(req)
                    fault = emulator.plan(req) if emulator.plan else emulator._fault
                    emulator.served_faults.append(fault)
                emulator._current.fault = fault
                if emulator.latency_s:
                    time.sleep(emulator.latency_s)
                try:
                    reply = emulator.hostile(emulator.handle(req), fault)
                except Exception as e:  # a bug in the emulator shows up as a 599, not a hang
                    reply = Reply(599, f"emulator error: {e!r}")
                finally:
                    emulator._current.fault = None
                if reply.delay and emulator._stopping.wait(reply.delay):
                    self.close_connection = True  # stopped while holding a 'timeout' answer back
                    return
                body = reply.body
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    reply.headers.setdefault("Content-Type", "application/json")
                elif isinstance(body, str):
                    body = body.encode()
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if reply.stream is None or reply.length is not None:
                        self.send_header("Content-Length", str(len(body) if reply.stream is None else reply.length))
                    else:
                        self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    if reply.stream is not None:
                        self._send_stream(reply)
                    elif reply.trickle_s:
                        self._trickle(body, reply.trickle_s)
                    else:
                        self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a timeout or size-cap test)

            def _send_stream(self, reply: Reply) -> None:
                chunked = reply.length is None
                for chunk in reply.stream():  # type: ignore[misc]
                    if emulator._stopping.is_set():
                        self.close_connection = True
                        return
                    if chunk:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")

            def _trickle(self, body: bytes, gap_s: float) -> None:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    if emulator._stopping.wait(gap_s):
                        self.close_connection = True
                        return

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 drops connections under concurrent load

            def handle_error(self, request: Any, client_address: Any) -> None:
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up (size caps, timeouts) is normal here
                    super().handle_error(request, client_address)

        self._stopping.clear()
        self._server = Server((host, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{type(self).__name__}", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # trickling and streaming answers end at their next write
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # ---- helpers ---------------------------------------------------------------------------------------------
    def calls(self, method: str | None = None, contains: str = "") -> list[Request]:
        with self.lock:
            return [r for r in self.requests if (method is None or r.method == method) and contains in r.path]

    def image_reply(self) -> Reply:
        """The bytes of a result image, honouring the image faults."""
        if self.fault == "not_image":
            return Reply(200, b"<html><body>Service unavailable</body></html>", {"Content-Type": "image/png"})
        if self.fault == "oversized":
            return Reply(200, bomb_png(), {"Content-Type": "image/png"})
        if self.fault == "truncated_jpeg":
            return Reply(200, truncated_jpeg(), {"Content-Type": "image/jpeg"})
        if self.fault == "huge":  # a PNG signature, then more bytes than anyone should hold
            return Reply(200, headers={"Content-Type": "image/png"}, stream=filler(self.huge_bytes, png()[:16], b"\0"),
                         length=self.huge_bytes if self.declare_length else None)
        return Reply(200, png(), {"Content-Type": "image/png"})

    def image_b64_reply(self, prefix: str, suffix: str) -> Reply | None:
        """Under "huge", a JSON answer whose base64 image string is ``huge_bytes`` long; else None."""
        return Reply.huge_json(prefix, self.huge_bytes, suffix) if self.fault == "huge" else None

    def image_url(self, path: str) -> str:
        """Where a result image is fetched from: this service, or under "foreign_url" another host."""
        return f"{self.foreign_host if self.fault == 'foreign_url' and self.foreign_host else self.url}{path}"

    @staticmethod
    def credential(req: Request) -> str:
        """The secret the request carried (what an "echo_key" answer quotes back)."""
        auth = req.headers.get("authorization", "")
        return auth.split(" ", 1)[-1] if auth else req.headers.get("x-goog-api-key", "") or req.headers.get("x-api-key", "")

    def hostile(self, reply: Reply, fault: str) -> Reply:
        """The handler's answer as a hostile service sends it (faults any emulator answers alike)."""
        if fault == "trickle" and reply.stream is None:
            reply.trickle_s = self.trickle_s
        elif fault == "huge_json" and reply.stream is None and "json" in reply.headers.get("Content-Type", "application/json"):
            if isinstance(reply.body, (dict, list)) or reply.body[:1] in (b"{", "{"):
                return reply.padded(self.huge_bytes)
        return reply

    def handle(self, req: Request) -> Reply:
        raise NotImplementedError


@contextmanager
def running(emulator: Emulator) -> Iterator[Emulator]:
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
