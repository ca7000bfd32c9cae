"""The REST API served for real: uvicorn on a free loopback port, in a thread of this process."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from pipeline.api.app import create_app
from pipeline.api.settings import ApiSettings
from pipeline.api.tokens import create_token
from pipeline.config import Settings
from pipeline.runs.background import BackgroundRunner
from tests.conftest import free_port


@contextlib.contextmanager
def serving(settings: Settings, engine, *, runner: bool = True, api: ApiSettings | None = None) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Yields the base URL once the server answers; stops it (and its runner) after."""
    background = BackgroundRunner(engine, settings, poll_seconds=0.1) if runner else None
    app = create_app(settings, engine, runner=background, api=api)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="api-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def client(base: str, engine, name: str, role: str, **kwargs) -> httpx.Client:  # type: ignore[no-untyped-def]
    """An HTTP client holding a new token for ``name`` with ``role``."""
    _, token = create_token(engine, name, role)
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kwargs)
