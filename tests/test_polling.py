"""Throughput on polled and queueing services (issue 17): polling by expectation, submitting ahead,
one connection pool per service, and SDKs imported only when used. Behaviour, never timing: the
emulators' own counts (polls, connections, queue positions, 429s) are what is asserted."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pipeline import registry
from pipeline.components import GenerationRequest, ImageProvider
from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.resilience.limits import LimitSettings, RateLimiter
from pipeline.services import pools, wire
from pipeline.services.ahead import WINDOW, SubmitAhead
from pipeline.services.polling import (
    BACKOFF,
    MIN_GAP_S,
    MIN_POLLS_TO_P90,
    MIN_SAMPLES,
    POLL_BUDGET,
    POLLS_TO_P90,
    TAIL_QUANTILE,
    LatencyModel,
    PollCounts,
)
from tests.emulators import Emulator, Reply, Request, running
from tests.emulators.capacity import KEY, CapacityService

FAST = {"timeout_s": 10.0, "poll_initial_s": 0.01, "poll_max_s": 0.05}


def fal_on(emulator: CapacityService, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> ImageProvider:
    monkeypatch.setenv("FAL_KEY", KEY)
    monkeypatch.setenv("FAL_BASE_URL", emulator.url)
    provider: ImageProvider = registry.providers.get_class("fal")(
        {**Settings.from_env().component("providers", "fal"), **FAST, "status_stream": emulator.model == "stream", **settings})
    return provider


def request(i: int) -> GenerationRequest:
    return GenerationRequest(prompt=f"a lighthouse in a storm, take {i}", width=512, height=512, seed=i, prompt_id=f"p{i}")


async def generate_all(provider: ImageProvider, n: int, at_once: int, *, shared: bool = True) -> None:
    """``n`` generations by ``at_once`` workers taking them in turn, as a run's prompt workers do."""
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await provider.generate(request(i))

    if shared:
        async with pools.shared_connections():
            await asyncio.gather(*(worker() for _ in range(at_once)))
    else:
        await asyncio.gather(*(worker() for _ in range(at_once)))


@pytest.fixture
def service(request: pytest.FixtureRequest) -> Iterator[CapacityService]:
    model, slots, median = request.param
    with running(CapacityService(model, slots=slots, median=median, sigma=0.5)) as emulator:
        yield emulator  # type: ignore[misc]


# ---- the emulators of the four service models ----------------------------------------------------------
def submit(emulator: CapacityService, prompt: str) -> httpx.Response:
    return httpx.post(f"{emulator.url}/fal-ai/flux/schnell", json={"prompt": prompt}, headers={"Authorization": f"Key {KEY}"})


@pytest.mark.parametrize("service", [("queue", 2, 30.0)], indirect=True)
def test_the_queueing_service_queues_beyond_its_slots_with_growing_queue_positions(service: CapacityService) -> None:
    answers = [submit(service, f"prompt {i}").json() for i in range(5)]
    assert [a["queue_position"] for a in answers] == [0, 0, 0, 1, 2]  # two run, three wait in order
    assert all(a["status"] == "IN_QUEUE" for a in answers)
    status = httpx.get(answers[4]["status_url"], headers={"Authorization": f"Key {KEY}"})
    assert status.status_code == 202 and status.json() == {"status": "IN_QUEUE", "queue_position": 2, "response_url": answers[4]["response_url"]}
    running_now = httpx.get(answers[0]["status_url"], headers={"Authorization": f"Key {KEY}"}).json()
    assert running_now["status"] == "IN_PROGRESS"
    assert service.served()["rejected"] == 0 and service.served()["polls"] == 2
    assert httpx.get(f"{answers[0]['status_url']}/stream", headers={"Authorization": f"Key {KEY}"}).status_code == 404  # polling only


@pytest.mark.parametrize("service", [("poll429", 2, 30.0)], indirect=True)
def test_the_429_service_refuses_beyond_its_slots_saying_when_one_frees(service: CapacityService) -> None:
    assert [submit(service, f"prompt {i}").status_code for i in range(3)] == [200, 200, 429]
    refused = submit(service, "one more")
    assert refused.status_code == 429 and int(refused.headers["retry-after-ms"]) > 0
    assert service.served()["rejected"] == 2 and service.served()["generations"] == 2


@pytest.mark.parametrize("service", [("sync", 1, 1.0)], indirect=True)
def test_the_synchronous_service_answers_the_image_itself_and_429_beyond_its_slots(service: CapacityService) -> None:
    answers: list[httpx.Response] = []
    first = threading.Thread(target=lambda: answers.append(httpx.post(f"{service.url}/generate", json={"prompt": "a red square"},
                                                                        timeout=30)))
    first.start()
    while not service.served()["generations"]:  # the first request holds the only slot for its whole generation
        time.sleep(0.005)
    refused = httpx.post(f"{service.url}/generate", json={"prompt": "a blue square"})
    first.join()
    assert refused.status_code == 429 and int(refused.headers["retry-after-ms"]) > 0
    assert answers[0].status_code == 200 and answers[0].headers["content-type"] == "image/png" and answers[0].content.startswith(b"\x89PNG")


@pytest.mark.parametrize("service", [("stream", 2, 0.02)], indirect=True)
def test_the_streaming_service_ends_its_status_stream_with_completed(service: CapacityService) -> None:
    ticket = submit(service, "a green square").json()
    stream = httpx.get(f"{ticket['status_url']}/stream", headers={"Authorization": f"Key {KEY}"})
    assert stream.headers["content-type"] == "text/event-stream" and '"COMPLETED"' in stream.text.splitlines()[-2]


def test_the_same_prompt_takes_the_same_time_and_latencies_are_log_normal() -> None:
    service = CapacityService("queue", median=1.0, sigma=0.5)
    times = [service.latency(f"prompt {i}") for i in range(2000)]
    assert service.latency("prompt 7") == times[7]
    logs = sorted(math.log(t) for t in times)
    assert abs(logs[1000]) < 0.05  # the median is 1 s
    assert abs((logs[1682] - logs[1000]) - 0.5) < 0.06  # one sigma above it: 0.5 in log space


# ---- polling by expectation ------------------------------------------------------------------------------
def test_the_schedule_polls_at_the_learnt_quantiles_then_backs_off_past_the_p90() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(1.0 + i / 200)  # uniform over 1..2 s
    times = []
    for at in model.schedule(initial_s=0.25, max_s=2.0):
        times.append(at)
        if at > 60:
            break
    before_tail = [t for t in times if t <= model.quantile(TAIL_QUANTILE) + 1e-9]
    assert len(before_tail) == POLLS_TO_P90 and before_tail[0] >= 1.0  # nothing wasted before the fastest job seen
    assert all(b - a >= MIN_GAP_S - 1e-9 for a, b in zip(times, times[1:], strict=False))
    tail_gaps = [b - a for a, b in zip(times[POLLS_TO_P90 - 1:], times[POLLS_TO_P90:], strict=False)]
    assert tail_gaps[1] == pytest.approx(tail_gaps[0] * BACKOFF) and max(tail_gaps) == pytest.approx(2.0)


def test_until_enough_is_learnt_the_schedule_is_the_plain_backoff() -> None:
    model = LatencyModel()
    for _ in range(MIN_SAMPLES - 1):
        model.observe(1.0)
    schedule = model.schedule(initial_s=0.25, max_s=2.0)
    assert [round(next(schedule), 4) for _ in range(4)] == [0.0, 0.25, 0.625, 1.1875]


def test_with_many_jobs_in_flight_each_gets_fewer_polls() -> None:
    counts = PollCounts()
    assert counts.polls_to_p90() == POLLS_TO_P90
    counts.in_flight = 64
    assert counts.polls_to_p90() == POLL_BUDGET // 64 < POLLS_TO_P90
    counts.in_flight = 10_000
    assert counts.polls_to_p90() == MIN_POLLS_TO_P90  # never fewer than this: a job is still noticed soon after it ends


def test_a_run_s_last_jobs_past_the_p90_are_polled_soon_after_they_end_not_seconds_later() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(1.0 + i / 200)  # uniform over 1..2 s: the p90 at 1.9 s
    counts = PollCounts(in_flight=1)  # the last job of a run: a 5 s one
    times = []
    for at in model.schedule(0.25, 2.0, counts.polls_to_p90(), lambda: counts.longest_wait(2.0)):
        times.append(at)
        if at > 60.0:
            break
    last_gap_to_p90 = times[POLLS_TO_P90 - 1] - times[POLLS_TO_P90 - 2]
    past = [b - a for a, b in zip(times[POLLS_TO_P90 - 1:], times[POLLS_TO_P90:], strict=False)]
    soon = [t for t in times[POLLS_TO_P90:] if t <= 4.5]
    assert len(soon) >= POLLS_TO_P90 // 2  # asked every ~0.08 s past the p90 up to 2.4 x the p90 ...
    assert max(past[:len(soon)]) <= max(last_gap_to_p90, counts.longest_wait(2.0)) + 1e-9 < 0.1  # (not up to 2 s apart)
    assert min(past) >= last_gap_to_p90 - 1e-9  # never asked faster than at the p90
    assert max(past) == pytest.approx(2.0)  # ... and a job still unfinished after that less and less often, as before
    counts.in_flight = 64  # among many jobs the back-off still reaches poll_max_s: the polls a second stay bounded
    assert counts.longest_wait(2.0) == 2.0


def test_a_slow_service_s_lone_job_is_not_asked_faster_past_its_p90() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(40.0 + i / 10)  # 40..60 s jobs: gaps of ~0.6 s before the p90
    times = []
    for at in model.schedule(0.5, 2.0, POLLS_TO_P90, lambda: PollCounts(in_flight=1).longest_wait(2.0)):
        times.append(at)
        if at > 120.0:
            break
    past = [b - a for a, b in zip(times[POLLS_TO_P90 - 1:], times[POLLS_TO_P90:], strict=False)]
    assert min(past) >= 0.5 and max(past) == pytest.approx(2.0)  # the waits grow to poll_max_s as before


@pytest.mark.parametrize("service", [("poll429", 64, 0.15)], indirect=True)
def test_a_service_polled_for_64_jobs_at_once_is_asked_less_often_per_job(service: CapacityService,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    asyncio.run(generate_all(provider, 64, at_once=8))  # learnt with few in flight
    learnt = service.served()["polls"]
    asyncio.run(generate_all(provider, 256, at_once=64))
    per_job = (service.served()["polls"] - learnt) / 256
    counts = provider.poll_counts  # type: ignore[attr-defined]
    assert counts.jobs == 64 + 256
    assert per_job < POLL_BUDGET // 64  # the quantile polls of a job among 64, not POLLS_TO_P90
    assert per_job < learnt / 64  # and fewer than each of the first jobs needed


@pytest.mark.parametrize("service", [("poll429", 4, 0.15)], indirect=True)
def test_polls_per_image_are_counted_and_bounded_and_the_latency_is_learnt(service: CapacityService,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    asyncio.run(generate_all(provider, 48, at_once=4))
    served = service.served()
    counts = provider.poll_counts  # type: ignore[attr-defined]
    assert counts.jobs == 48 and counts.polls == served["polls"]  # every poll counted, none missed
    assert counts.most <= POLLS_TO_P90 + 12  # the quantile polls plus the backoff's up to the deadline at most
    assert served["polls"] / 48 < POLLS_TO_P90  # most jobs are found done inside the quantile polls
    true_median = sorted(served["latencies"])[len(served["latencies"]) // 2]
    assert provider.latencies.quantile(0.5) == pytest.approx(true_median, rel=0.5)  # type: ignore[attr-defined]


# ---- submitting ahead ------------------------------------------------------------------------------------
def test_submit_ahead_grows_while_the_queue_runs_dry_up_to_its_setting() -> None:
    ahead = SubmitAhead("fal", most=3)
    assert ahead.slots(8) == 1
    for _ in range(3 * WINDOW):
        ahead.accepted({"status": "IN_QUEUE", "queue_position": 0})
    assert ahead.slots(8) == 3  # grew by one per dry window, then held at the setting
    assert ahead.slots(8) == 3 and not ahead.stopped_because


def test_submit_ahead_holds_while_requests_wait_in_the_queue() -> None:
    ahead = SubmitAhead("fal", most=4)
    for _ in range(4 * WINDOW):
        ahead.accepted({"queue_position": 0})
        ahead.accepted({"queue_position": 1})
        ahead.accepted({"queue_position": 2})
    assert ahead.slots(8) == 1 and not ahead.stopped_because  # most not at 0: the queue holds


def test_submit_ahead_stops_on_a_429_or_when_the_service_reports_no_queue() -> None:
    refused = SubmitAhead("fal", most=4)
    refused.refused(500)
    assert refused.slots(8) == 1
    refused.refused(429)
    assert refused.slots(8) == 0 and "429" in refused.stopped_because
    refused.accepted({"queue_position": 0})
    assert refused.slots(8) == 0  # stopped for good

    silent = SubmitAhead("leonardo", most=4)
    silent.accepted({"request_id": "x"})
    assert silent.slots(8) == 0 and "queue_position" in silent.stopped_because
    assert SubmitAhead("comfyui", most=0).slots(8) == 0


def test_submit_ahead_stops_when_queue_positions_never_grow_with_the_most_ahead() -> None:
    ahead = SubmitAhead("fal", most=2)
    for _ in range(WINDOW):
        ahead.accepted({"queue_position": 0})
    assert ahead.slots(8) == 2
    for _ in range(2 * WINDOW):
        ahead.accepted({"queue_position": 0})
    assert ahead.slots(8) == 0 and "queue_position" in ahead.stopped_because


def test_the_limiter_grants_the_slots_asked_for_ahead_until_a_429_cuts_the_limit() -> None:
    async def scenario() -> list[int]:
        limiter = RateLimiter(LimitSettings(max_concurrency=2, requests_per_minute=0, grow_after=100, quota_reserve=0.0))
        limiter.ahead = lambda max_concurrency: 1
        seen: list[int] = []
        release = asyncio.Event()

        async def call() -> None:
            async with limiter.slot():
                seen.append(limiter.in_flight)
                await release.wait()

        tasks = [asyncio.create_task(call()) for _ in range(5)]
        await asyncio.sleep(0.05)
        seen.append(-1)
        limiter.rate_limited(None)  # a 429: the limit is cut, and nothing more goes ahead
        release.set()
        await asyncio.gather(*tasks)
        return seen

    seen = asyncio.run(scenario())
    assert seen[:4] == [1, 2, 3, -1]  # the limit of 2, plus 1 ahead
    assert max(seen[4:]) <= 2


@pytest.mark.parametrize("service", [("queue", 2, 0.1)], indirect=True)
def test_against_a_queueing_service_requests_go_ahead_and_are_queued_not_refused(service: CapacityService,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch, submit_ahead=3)
    asyncio.run(generate_all(provider, 3, at_once=3))  # one more than the 2 slots: it waits in fal's queue
    served = service.served()
    assert served["rejected"] == 0 and served["max_queue_wait"] > 0
    assert provider.ahead.slots(2) >= 1 and not provider.ahead.stopped_because  # type: ignore[attr-defined]


@pytest.mark.parametrize("service", [("poll429", 2, 0.1)], indirect=True)
def test_against_a_service_that_refuses_submitting_ahead_stops_at_the_first_429(service: CapacityService,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch, submit_ahead=3)

    async def three_at_once() -> list[Any]:
        async with pools.shared_connections():
            return await asyncio.gather(*(provider.generate(request(i)) for i in range(3)), return_exceptions=True)

    outcomes = asyncio.run(three_at_once())
    assert sum(getattr(o, "http_status", None) == 429 for o in outcomes) == 1
    assert provider.ahead.slots(2) == 0 and "429" in provider.ahead.stopped_because  # type: ignore[attr-defined]


# ---- connections -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", [("poll429", 4, 0.02), ("stream", 4, 0.02)], indirect=True)
def test_a_run_reuses_one_pool_of_connections_per_service(service: CapacityService, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    opened = pools.connections_opened("fal")
    asyncio.run(generate_all(provider, 24, at_once=2))
    served = service.served()
    assert served["requests"] >= 24 * 3  # submit, result and image at least, per image
    assert served["connections"] <= 4  # ~2 (two calls at once), whatever the number of calls
    assert pools.connections_opened("fal") - opened == served["connections"]


@pytest.mark.parametrize("service", [("poll429", 4, 0.02)], indirect=True)
def test_outside_a_run_each_call_has_its_own_connections_closed_after_it(service: CapacityService,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    asyncio.run(generate_all(provider, 5, at_once=1, shared=False))
    assert service.served()["connections"] == 5


def test_pools_are_closed_when_the_run_ends_and_never_shared_across_event_loops() -> None:
    class Pool:
        closed = False

        async def aclose(self) -> None:
            self.closed = True

    made: list[Pool] = []

    def make() -> Pool:
        made.append(Pool())
        return made[-1]

    async def run_with_pool() -> None:
        async with pools.shared_connections():
            first = pools.shared("svc", "httpx", make)
            assert pools.shared("svc", "httpx", make) is first  # the same pool for every call in the run

    asyncio.run(run_with_pool())
    asyncio.run(run_with_pool())
    assert len(made) == 2 and all(p.closed for p in made)  # one per loop, each closed at the end
    assert pools.shared("svc", "httpx", lambda: object()) is None  # no loop, no pool


# ---- start-up --------------------------------------------------------------------------------------------
def test_the_vendor_sdks_are_imported_only_when_their_service_is_used() -> None:
    code = ("import sys; import pipeline.services; from pipeline import registry; registry.ensure_loaded(); "
            "import pipeline.services.openai, pipeline.services.gemini; "
            "loaded = [m for m in ('openai', 'google.genai', 'httpx2') if m in sys.modules]; assert not loaded, loaded; "
            "from pipeline.services.openai import openai_error; openai_error('openai', ValueError('x')); "
            "assert 'openai' in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---- a job's status request, built once and sent at each poll (wire.Repeat) ---------------------------------
class StatusService(Emulator):
    """A status endpoint that sets a cookie, moves (``/moved`` redirects to ``/status``), and can answer too much."""

    def __init__(self) -> None:
        super().__init__()
        self.too_much = False

    def handle(self, req: Request) -> Reply:
        if req.path == "/moved":
            return Reply(307, b"", {"Location": f"{self.url}/status"})
        if self.too_much:
            return Reply.json({"status": "IN_PROGRESS", "logs": ["x" * 1000] * 100})
        return Reply.json({"status": "IN_PROGRESS"}, **{"Set-Cookie": "session=abc; Path=/"})


@pytest.fixture
def status_service() -> Iterator[StatusService]:
    with running(StatusService()) as emulator:
        yield emulator  # type: ignore[misc]


def polls(url: str, n: int, cap_bytes: int = 1 << 20, *, with_result: bool = False) -> list[Any]:
    """``n`` polls of ``url`` through one service client's repeated request; each answer's JSON, or the error.
    ``with_result``: asked once the ordinary way before, and the job's result after, on the same client."""
    base = url.rpartition("/")[0]
    guard = wire.Guard("status-test", wire.BodyCap(cap_bytes, "JSON answers", "max_json_bytes"))

    async def run() -> list[Any]:
        seen: list[Any] = []
        async with pools.shared_connections(), wire.client(headers={"Authorization": "Key k"}, guard=guard, share=True) as http:
            status = wire.Repeat(http, "status-test", url)
            if with_result:  # asked the ordinary way first, as a resumed job is (fal's _still_there)
                await wire.send(http, "status-test", "GET", url)
            for _ in range(n):
                try:
                    seen.append(wire.json_of("status-test", await status.send()))
                except ProviderError as e:
                    seen.append(e)
            if with_result:  # the job's next request, the ordinary way on the same client
                await wire.send(http, "status-test", "GET", f"{base}/result")
        return seen

    return asyncio.run(run())


def test_a_status_polled_again_and_again_carries_the_services_key_and_no_cookie_it_set(status_service: StatusService) -> None:
    assert polls(f"{status_service.url}/status", 3, with_result=True) == [{"status": "IN_PROGRESS"}] * 3
    assert [r.path for r in status_service.requests] == ["/status"] * 4 + ["/result"]
    assert all(r.headers.get("authorization") == "Key k" for r in status_service.requests)
    assert not any("cookie" in r.headers for r in status_service.requests)  # the service's Set-Cookie is never sent back


def test_a_status_url_that_redirects_is_followed_at_every_poll(status_service: StatusService) -> None:
    assert polls(f"{status_service.url}/moved", 2) == [{"status": "IN_PROGRESS"}] * 2
    assert [r.path for r in status_service.requests].count("/status") == 2


def test_a_status_answer_past_the_json_cap_fails_too_large_and_the_next_poll_still_gets_through(status_service: StatusService) -> None:
    status_service.too_much = True
    first = polls(f"{status_service.url}/status", 1, cap_bytes=10_000)[0]
    assert isinstance(first, ProviderError) and first.kind == "too_large"
    status_service.too_much = False
    assert polls(f"{status_service.url}/status", 2, cap_bytes=10_000) == [{"status": "IN_PROGRESS"}] * 2
