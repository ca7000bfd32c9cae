"""An S3-compatible endpoint on loopback: moto's server (a real S3 wire implementation) behind a gateway.

moto stores and serves objects, but does not check the integrity headers S3 documents, and
cannot be told to misbehave. The gateway in front of it does both:

- it checks ``Content-MD5`` and ``x-amz-checksum-sha256`` of every PUT against the body, as S3
  does, and answers ``400 BadDigest`` without storing anything when they differ;
- ``fault`` (for the next ``fault_count`` requests, or all when None):
  ``deny`` 403 AccessDenied (what a bucket policy refusing the keys answers), ``500`` InternalError,
  ``slow`` an answer after ``slow_s``, ``cut`` a PUT whose connection drops half-way through its body,
  ``corrupt`` a PUT whose body has one byte changed on the way.

Every request is recorded as (method, path) so a test can count tries.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.server import ThreadedMotoServer

S3_ERROR = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            '<RequestId>gateway</RequestId></Error>')


class S3Gateway:
    def __init__(self) -> None:
        self.fault = "ok"
        self.fault_count: int | None = None  # requests still to get the fault (None: every one)
        self.slow_s = 2.0
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server: ThreadingHTTPServer | None = None
        self.url = ""
        self.moto_url = ""

    def set_fault(self, fault: str, count: int | None = None) -> None:
        with self.lock:
            self.fault, self.fault_count = fault, count

    def _take_fault(self) -> str:
        with self.lock:
            if self.fault == "ok" or self.fault_count == 0:
                return "ok"
            if self.fault_count is not None:
                self.fault_count -= 1
            return self.fault

    def calls(self, method: str = "", contains: str = "") -> list[tuple[str, str]]:
        with self.lock:
            return [r for r in self.requests if (not method or r[0] == method) and contains in r[1]]

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> "S3Gateway":
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.moto_url = f"http://{host}:{port}"
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                length = headers.get("Content-Length", headers.get("content-length", "0")) if self.command == "HEAD" else len(body)
                self.send_header("Content-Length", str(length))  # a HEAD says the object's length, with no body
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str, message: str) -> None:
                self._answer(status, S3_ERROR.format(code=code, message=message).encode(), {"Content-Type": "application/xml"})

            def _serve(self) -> None:
                with gateway.lock:
                    gateway.requests.append((self.command, self.path))
                fault = gateway._take_fault()
                length = int(self.headers.get("Content-Length") or 0)
                if fault == "cut" and self.command == "PUT" and length:
                    self.rfile.read(length // 2)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the upload breaks off: no answer, nothing stored
                    return
                body = self.rfile.read(length) if length else b""
                if fault == "corrupt" and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                if fault == "slow":
                    time.sleep(gateway.slow_s)
                if fault == "deny":
                    return self._error(403, "AccessDenied", "Access Denied")
                if fault == "500":
                    return self._error(500, "InternalError", "We encountered an internal error. Please try again.")
                if self.command == "PUT" and (problem := self._digest_problem(body)):
                    return self._error(400, "BadDigest", problem)
                self._forward(body)

            def _digest_problem(self, body: bytes) -> str:
                md5, sha = self.headers.get("Content-MD5"), self.headers.get("x-amz-checksum-sha256")
                if md5 and base64.b64encode(hashlib.md5(body).digest()).decode() != md5:
                    return "The Content-MD5 you specified did not match what we received."
                if sha and base64.b64encode(hashlib.sha256(body).digest()).decode() != sha:
                    return "The SHA256 you specified did not match the calculated checksum."
                return ""

            def _forward(self, body: bytes) -> None:
                conn = http.client.HTTPConnection(gateway.moto_url.removeprefix("http://"), timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    self._answer(answer.status, data, dict(answer.getheaders()))
                finally:
                    conn.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _serve

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that hung up (timeout tests) is normal here

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._moto.stop()
