"""Throughput on polled and queueing services (issue 17): polling by expectation, submitting ahead,
one connection pool per service, and SDKs imported only when used. Behaviour, never timing: the
emulators' own counts (polls, connections, queue positions, 429s) are what is asserted."""

from __future__ import annotations

import asyncio
import math
import random
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
    GAUGE_WINDOW_S,
    MAX_POLL_BUDGET,
    MIN_GAP_S,
    MIN_POLLS_TO_TAIL,
    MIN_SAMPLES,
    POLL_BUDGET,
    POLLS_TO_TAIL,
    SHORTENED_POLLS,
    TAIL_QUANTILE,
    CpuGauge,
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
def split_at_tail(model: LatencyModel, times: list[float]) -> tuple[list[float], list[float]]:
    """A job's poll times up to the tail quantile, and the waits between its polls after it."""
    tail = model.quantile(TAIL_QUANTILE) + 1e-9
    before = [t for t in times if t <= tail]
    after = times[len(before) - 1:]
    return before, [b - a for a, b in zip(after, after[1:], strict=False)]


def schedule_times(model: LatencyModel, until: float, *args: Any) -> list[float]:
    times = []
    for at in model.schedule(*args):
        times.append(at)
        if at > until:
            return times
    raise AssertionError("unreachable")


def test_the_schedule_polls_densest_where_a_running_job_is_likeliest_to_end_then_backs_off_past_the_tail() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(1.0 + i / 200)  # uniform over 1..2 s: a job still running at 1.9 s ends within 0.1 s
    times = schedule_times(model, 60.0, 0.25, 2.0)
    before, tail_gaps = split_at_tail(model, times)
    assert before[0] >= 1.0  # nothing wasted before the fastest job seen
    assert POLLS_TO_TAIL - 8 <= len(before) <= POLLS_TO_TAIL
    assert all(b - a >= MIN_GAP_S - 1e-9 for a, b in zip(times, times[1:], strict=False))
    gaps = [b - a for a, b in zip(before, before[1:], strict=False)]
    assert gaps[0] > 3 * gaps[-1]  # closer and closer as the jobs still running near their end
    assert tail_gaps[1] == pytest.approx(tail_gaps[0] * BACKOFF) and max(tail_gaps) == pytest.approx(2.0)


def equal_probability_points(model: LatencyModel, polls: int) -> list[float]:
    """The earlier schedule: polls at equal steps of probability up to the p90 (then the same back-off)."""
    return sorted({model.quantile(0.9 * i / polls) for i in range(1, polls + 1)})


def notice_and_polls(points: list[float], jobs: list[float]) -> tuple[float, float]:
    """The mean time from a job's end to the poll that sees it, and the mean polls a job takes."""
    delay = polls = 0.0
    for t in jobs:
        at, gap, made = 0.0, points[-1] - points[-2], 0
        for at in points:
            made += 1
            if at >= t:
                break
        while at < t:
            gap = min(gap * BACKOFF, 2.0)
            at, made = at + gap, made + 1
        delay, polls = delay + at - t, polls + made
    return delay / len(jobs), polls / len(jobs)


def test_log_normal_jobs_are_noticed_sooner_than_by_equal_steps_of_probability_for_no_more_polls() -> None:
    rng = random.Random(7)
    model = LatencyModel()
    for _ in range(256):
        model.observe(math.exp(rng.gauss(0.0, 0.5)))  # 1 s median, sigma 0.5: the bench's jobs
    jobs = [math.exp(rng.gauss(0.0, 0.5)) for _ in range(4000)]
    old_delay, old_polls = notice_and_polls(equal_probability_points(model, 12), jobs)  # 12 each: 64 jobs in flight, before
    new_delay, new_polls = notice_and_polls(model.poll_points(24), jobs)
    assert new_polls <= old_polls * 1.05
    assert new_delay < 0.8 * old_delay  # ~65 ms against ~94 ms


def test_until_enough_is_learnt_the_schedule_is_the_plain_backoff() -> None:
    model = LatencyModel()
    for _ in range(MIN_SAMPLES - 1):
        model.observe(1.0)
    schedule = model.schedule(initial_s=0.25, max_s=2.0)
    assert [round(next(schedule), 4) for _ in range(4)] == [0.0, 0.25, 0.625, 1.1875]


class ProcessClock:
    """A process's wall clock and the CPU it used, moved by hand: ``work(seconds, share)``."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def work(self, seconds: float, share: float) -> None:
        self.wall += seconds
        self.cpu += seconds * share

    def gauge(self) -> CpuGauge:
        return CpuGauge(clock=lambda: self.wall, cpu=lambda: self.cpu)


def busy_gauge() -> CpuGauge:
    """A gauge whose window never ends: the poll budget stays at its least, as in a busy process."""
    return CpuGauge(clock=lambda: 0.0, cpu=lambda: 0.0)


def test_with_many_jobs_in_flight_each_gets_fewer_polls() -> None:
    counts = PollCounts(gauge=busy_gauge())
    assert counts.polls_to_tail() == POLLS_TO_TAIL
    counts.in_flight = 64
    assert counts.polls_to_tail() == POLL_BUDGET // 64 < POLLS_TO_TAIL
    counts.in_flight = 10_000
    assert counts.polls_to_tail() == MIN_POLLS_TO_TAIL  # never fewer than this: a job is still noticed soon after it ends


def test_a_process_with_cpu_to_spare_polls_its_many_jobs_more_closely_and_less_once_it_is_short_of_it() -> None:
    clock = ProcessClock()
    counts = PollCounts(in_flight=64, gauge=clock.gauge())
    assert counts.polls_to_tail() == POLL_BUDGET // 64  # 24: what a busy process gives each of 64 jobs
    clock.work(GAUGE_WINDOW_S / 2, share=0.3)
    assert counts.polls_to_tail() == POLL_BUDGET // 64  # judged once a window, not at every job
    seen = []
    for _ in range(12):  # a process using 30 % of its core: more polls per job, a step a window, up to the most
        clock.work(GAUGE_WINDOW_S, share=0.3)
        seen.append(counts.polls_to_tail())
    assert seen == sorted(seen) and seen[0] > POLL_BUDGET // 64
    assert seen[-1] == min(POLLS_TO_TAIL, MAX_POLL_BUDGET // 64) == POLLS_TO_TAIL  # 64: a 1 s job noticed ~35 ms sooner
    counts.in_flight = 128
    assert counts.polls_to_tail() == MAX_POLL_BUDGET // 128  # the budget is shared by the jobs in flight, never passed
    clock.work(GAUGE_WINDOW_S, share=0.7)  # between the two marks: it holds
    assert counts.polls_to_tail() == MAX_POLL_BUDGET // 128
    fewer = []
    for _ in range(12):  # the process is short of CPU (a slower machine, a busy app): back down, never below the least
        clock.work(GAUGE_WINDOW_S, share=0.95)
        fewer.append(counts.polls_to_tail())
    assert fewer == sorted(fewer, reverse=True) and fewer[0] < MAX_POLL_BUDGET // 128 and fewer[-1] == max(MIN_POLLS_TO_TAIL, POLL_BUDGET // 128)


def test_a_run_s_last_jobs_past_the_tail_are_polled_soon_after_they_end_not_seconds_later() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(1.0 + i / 200)  # uniform over 1..2 s
    counts = PollCounts(in_flight=1)  # the last job of a run: a 5 s one
    times = schedule_times(model, 60.0, 0.25, 2.0, counts.polls_to_tail(), lambda: counts.longest_wait(2.0))
    before, past = split_at_tail(model, times)
    last_gap_to_tail = before[-1] - before[-2]
    soon = [t for t in times[len(before):] if t <= 4.5]
    assert len(soon) >= SHORTENED_POLLS // 2  # asked every ~0.08 s past the tail up to 2.3 x the p99 ...
    assert max(past[:len(soon)]) <= max(last_gap_to_tail, counts.longest_wait(2.0)) + 1e-9 < 0.1  # (not up to 2 s apart)
    assert min(past) >= last_gap_to_tail - 1e-9  # never asked faster than just before the tail
    assert max(past) == pytest.approx(2.0)  # ... and a job still unfinished after that less and less often, as before
    counts.in_flight = 64  # among many jobs the back-off still reaches poll_max_s: the polls a second stay bounded
    assert counts.longest_wait(2.0) == 2.0


def test_a_slow_service_s_lone_job_is_not_asked_faster_past_its_tail() -> None:
    model = LatencyModel()
    for i in range(200):
        model.observe(40.0 + i / 10)  # 40..60 s jobs
    times = schedule_times(model, 120.0, 0.5, 2.0, POLLS_TO_TAIL, lambda: PollCounts(in_flight=1).longest_wait(2.0))
    before, past = split_at_tail(model, times)
    assert min(past) >= before[-1] - before[-2] - 1e-9 and max(past) == pytest.approx(2.0)  # the waits grow to poll_max_s as before


@pytest.mark.parametrize("service", [("poll429", 64, 0.15)], indirect=True)
def test_a_service_polled_for_64_jobs_at_once_is_asked_less_often_per_job(service: CapacityService,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    provider.poll_counts.gauge = busy_gauge()  # type: ignore[attr-defined]  # (a test process has CPU to spare)
    asyncio.run(generate_all(provider, 64, at_once=8))  # learnt with few in flight
    learnt = service.served()["polls"]
    asyncio.run(generate_all(provider, 256, at_once=64))
    per_job = (service.served()["polls"] - learnt) / 256
    counts = provider.poll_counts  # type: ignore[attr-defined]
    assert counts.jobs == 64 + 256
    assert per_job < POLL_BUDGET // 64  # the quantile polls of a job among 64, not POLLS_TO_TAIL
    assert per_job < learnt / 64  # and fewer than each of the first jobs needed


@pytest.mark.parametrize("service", [("poll429", 4, 0.15)], indirect=True)
def test_polls_per_image_are_counted_and_bounded_and_the_latency_is_learnt(service: CapacityService,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fal_on(service, monkeypatch)
    asyncio.run(generate_all(provider, 48, at_once=4))
    served = service.served()
    counts = provider.poll_counts  # type: ignore[attr-defined]
    assert counts.jobs == 48 and counts.polls == served["polls"]  # every poll counted, none missed
    assert counts.most <= POLLS_TO_TAIL + 12  # the quantile polls plus the backoff's up to the deadline at most
    assert served["polls"] / 48 < POLLS_TO_TAIL  # most jobs are found done inside the quantile polls
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


def test_with_many_slots_more_requests_go_ahead_up_to_a_share_of_them() -> None:
    ahead = SubmitAhead("fal", most=3, per_slot=0.25)
    assert ahead.slots(64) == 1
    for _ in range(15 * WINDOW):  # dry windows: one more ahead each
        ahead.accepted({"queue_position": 0})
        ahead.slots(64)
    assert ahead.slots(64) == 16 and not ahead.stopped_because  # a quarter of 64, more than the setting's 3
    assert ahead.slots(8) == 3  # with 8 slots, the setting
    assert SubmitAhead("fal", most=0, per_slot=0.25).slots(64) == 0  # not enabled: never


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
