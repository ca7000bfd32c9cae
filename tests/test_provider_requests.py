"""Asynchronous services (fal queue, Leonardo, ComfyUI): the job is reported before it is waited on,
a resumed request polls that job instead of submitting (and paying) again, and a job the service
no longer knows is submitted anew. Provider-level; the whole kill -9 → resume path is in
tests/test_request_resume.py.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from pipeline import registry
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, Submission
from pipeline.config import Settings
from tests.emulators import Emulator, Reply, Request, comfyui, leonardo
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator

FAST = {"timeout_s": 5.0, "poll_initial_s": 0.01, "poll_max_s": 0.05}


class ForgetfulFal(FalEmulator):
    """fal as it answers about a request id it does not know (never submitted, or expired): 404."""

    def __init__(self) -> None:
        super().__init__()
        self.known: set[str] = set()
        self.streams = False  # statuses are polled, so a test can hold a job "in progress"

    def handle(self, req: Request) -> Reply:
        m = re.fullmatch(r"/[^/]+/[^/]+/requests/(?P<rid>[^/]+).*", req.path)
        if m and m["rid"] not in self.known:
            return Reply.json({"detail": "Request not found"}, 404)
        reply = super().handle(req)
        if req.method == "POST" and reply.status == 200:
            self.known.add(json.loads(reply.body)["request_id"])  # type: ignore[arg-type]
        return reply


class ForgetfulLeonardo(leonardo.LeonardoEmulator):
    """Leonardo as it answers about a generation it does not know: 200 with ``generations_by_pk: null``."""

    def __init__(self) -> None:
        super().__init__()
        self.known: set[str] = set()

    def handle(self, req: Request) -> Reply:
        m = re.fullmatch(r"/api/rest/v1/generations/(?P<gid>[\w-]+)", req.path)
        if m and req.method == "GET" and m["gid"] not in self.known:
            return Reply.json({"generations_by_pk": None})
        reply = super().handle(req)
        if req.method == "POST" and reply.status == 200:
            self.known.add(json.loads(reply.body)["sdGenerationJob"]["generationId"])  # type: ignore[arg-type]
        return reply


@dataclass
class Case:
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    submit_path: str
    hold: Callable[[Emulator, bool], None]  # keep submitted jobs unfinished (True) or let them finish (False)
    forget: Callable[[Emulator], None]  # the service loses every job (expiry, restart)


def _hold_polls(e: Emulator, on: bool) -> None:
    e.polls_before_done = 10**9 if on else 1  # type: ignore[attr-defined]
    if not on:
        e.polls.clear()  # type: ignore[attr-defined]


CASES = [
    Case("fal", ForgetfulFal, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}, "/fal-ai/",
         _hold_polls, lambda e: e.known.clear()),  # type: ignore[attr-defined]
    Case("leonardo", ForgetfulLeonardo, lambda e: {"LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"},
         "/api/rest/v1/generations", _hold_polls, lambda e: e.known.clear()),  # type: ignore[attr-defined]
    Case("comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}, "/prompt",
         lambda e, on: setattr(e, "stuck", on), lambda e: e.graphs.clear()),  # type: ignore[attr-defined]
]


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Case, Emulator, ImageProvider]]:
    case: Case = request.param
    emulator = case.emulator().start()
    for key, value in case.env(emulator).items():
        monkeypatch.setenv(key, value)
    settings = {**Settings.from_env().component("providers", case.name), **FAST, "usd_per_credit": 0.0005}
    try:
        yield case, emulator, registry.providers.get_class(case.name)(settings)
    finally:
        emulator.stop()


def submits(case: Case, emulator: Emulator) -> int:
    return len([r for r in emulator.calls("POST") if r.path.startswith(case.submit_path)])


def request(**changes: Any) -> GenerationRequest:
    return replace(GenerationRequest(prompt="a lighthouse in a storm", width=512, height=512, seed=3, prompt_id="p1"), **changes)


async def _crash_after_submission(provider: ImageProvider, seen: list[Submission]) -> None:
    """Start a generation, and cancel it (the process dies) once the job was reported."""
    task = asyncio.create_task(provider.generate(request(on_submitted=seen.append)))
    for _ in range(500):
        if seen or task.done():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_job_is_reported_before_waiting_and_a_resume_polls_it_without_submitting_again(service) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = service
    case.hold(emulator, True)
    seen: list[Submission] = []
    asyncio.run(_crash_after_submission(provider, seen))
    assert len(seen) == 1 and seen[0].service == case.name and seen[0].request_id
    assert submits(case, emulator) == 1

    case.hold(emulator, False)  # the service finishes the job while we are down
    again: list[Submission] = []
    result: GeneratedImage = asyncio.run(provider.generate(request(resume=seen[0], on_submitted=again.append)))
    assert submits(case, emulator) == 1, "the resumed request was submitted (and paid for) a second time"
    assert again == []
    assert result.request_id == seen[0].request_id
    assert result.source_url.startswith(emulator.url) and result.data


def test_a_job_the_service_no_longer_knows_is_submitted_anew(service) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = service
    case.hold(emulator, True)
    seen: list[Submission] = []
    asyncio.run(_crash_after_submission(provider, seen))
    case.forget(emulator)  # expired, or the server restarted
    case.hold(emulator, False)
    again: list[Submission] = []
    result = asyncio.run(provider.generate(request(resume=seen[0], on_submitted=again.append)))
    assert submits(case, emulator) == 2
    assert len(again) == 1 and again[0].request_id != seen[0].request_id
    assert result.request_id == again[0].request_id and result.data


def test_a_resume_meant_for_another_service_is_ignored(service) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = service
    case.hold(emulator, False)
    result = asyncio.run(provider.generate(request(resume=Submission("someone-else", "abc"))))
    assert submits(case, emulator) == 1 and result.request_id != "abc"


def test_the_service_s_own_metadata_comes_back_with_the_image(service) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = service
    case.hold(emulator, False)
    result = asyncio.run(provider.generate(request()))
    assert result.request_id and result.source_url.startswith(emulator.url)
    expected = {"fal": "seed", "leonardo": "credits", "comfyui": "outputs"}[case.name]
    assert result.metadata.get(expected) is not None
