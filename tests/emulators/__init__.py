"""Loopback emulators: real HTTP servers on 127.0.0.1 speaking each service's documented wire format.

Each emulator records every request it receives (so tests can count calls and inspect what was
sent) and can be told to misbehave in the ways the contract tests need. ``fault`` names one of
:data:`FAULTS`; each emulator answers it in its own service's shape.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image

FAULTS = ("ok", "400", "401", "429", "500", "timeout", "malformed", "blocked", "not_image", "oversized")
RETRY_AFTER_S = 7
SLOW_S = 1.5  # longer than the contract tests' client timeout


@lru_cache(maxsize=8)
def png(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 60, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


@lru_cache(maxsize=1)
def bomb_png() -> bytes:
    """A small file that decodes to 100 million pixels (a decompression bomb)."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    return buf.getvalue()


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

    @classmethod
    def json(cls, payload: Any, status: int = 200, **headers: str) -> "Reply":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **headers})


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
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""

    @property
    def fault(self) -> str:
        return getattr(self._current, "fault", None) or self._fault

    @fault.setter
    def fault(self, value: str) -> None:
        self._fault = value

    # ---- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> "Emulator":
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: Nagle would add ~40 ms

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
                    reply = emulator.handle(req)
                except Exception as e:  # a bug in the emulator shows up as a 599, not a hang
                    reply = Reply(599, f"emulator error: {e!r}")
                finally:
                    emulator._current.fault = None
                if reply.delay:
                    time.sleep(reply.delay)
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
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 drops connections under concurrent load

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=f"{type(self).__name__}", daemon=True).start()
        return self

    def stop(self) -> None:
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
        return Reply(200, png(), {"Content-Type": "image/png"})

    def handle(self, req: Request) -> Reply:
        raise NotImplementedError


@contextmanager
def running(emulator: Emulator) -> Iterator[Emulator]:
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()
