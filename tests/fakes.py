"""Fake components, registered like any plugin (``DARKROOM_PLUGINS=tests.fakes`` in subprocesses).

``FakeProvider`` renders with the offline renderer but lets a test script failures, delays and
gates per prompt, and keeps a ``history`` of every request. A prompt in ``stubborn`` makes a call
that ignores its cancellation for that many seconds, like a badly behaved SDK. With ``DARKROOM_FAKE_JOURNAL`` set
it also appends one line per call to that file: the count of calls the "service" received,
independent of the pipeline's own call log (the kill -9 test reads it across processes).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.registry import providers
from pipeline.services.offline.render import render


class FakeProvider(ImageProvider):
    name = "fake"
    label = "test fake"

    # Class-level script so the registry's fresh instance sees what the test set up.
    history: list[GenerationRequest] = []
    failures: deque[ProviderError | bytes] = deque()
    delays: dict[str, float] = {}
    gates: dict[str, asyncio.Event] = {}
    stubborn: dict[str, float] = {}
    on_call: Callable[[GenerationRequest], None] | None = None

    @classmethod
    def reset(cls) -> None:
        cls.history = []
        cls.failures = deque()
        cls.delays = {}
        cls.gates = {}
        cls.stubborn = {}
        cls.on_call = None

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        type(self).history.append(request)
        journal = os.environ.get("DARKROOM_FAKE_JOURNAL")
        if journal:
            with open(journal, "a", encoding="utf-8") as f:
                f.write(f"{request.prompt_id}\t{request.prompt}\n")
        hook = type(self).on_call  # read off the class: a function stored there is not bound
        if hook:
            hook(request)
        if request.prompt_id in self.gates:
            await self.gates[request.prompt_id].wait()
        if request.prompt_id in self.stubborn:
            until = time.monotonic() + self.stubborn[request.prompt_id]
            while time.monotonic() < until:
                try:
                    await asyncio.sleep(0.05)
                except asyncio.CancelledError:  # swallowed: this call keeps going whatever the caller wants
                    continue
        delay = self.delays.get(request.prompt_id, float(os.environ.get("DARKROOM_FAKE_DELAY", "0")))
        if delay:
            await asyncio.sleep(delay)
        if self.failures:
            failure = self.failures.popleft()
            if isinstance(failure, bytes):
                return GeneratedImage(data=failure, mime_type="image/png", model="fake-1")
            raise failure
        if "forbidden" in request.prompt:
            raise ContentBlocked("the prompt was refused by the fake's content policy", http_status=400)
        data = await asyncio.to_thread(render, request.prompt, seed=request.seed, width=request.width,
                                       height=request.height, fmt="PNG")
        return GeneratedImage(data=data, mime_type="image/png", model="fake-1", cost_usd=0.01)


providers.register(FakeProvider)


class KeyedProvider(FakeProvider):
    """A fake that needs a key, for checking how keys are reported (never shown)."""

    name = "keyed"
    label = "test fake with a key"
    key_env_var = "KEYED_API_KEY"
    base_url_env_var = "KEYED_BASE_URL"
    default_base_url = "https://keyed.invalid"
