"""Polling by expectation: ask about a job when it is likely to have finished, not on a fixed clock.

A polled service (fal without its status stream, Leonardo, ComfyUI) tells us a job is done only
when asked. A fixed backoff (0.25 s ×1.5 up to 2 s) notices a 1 s job 0.2–0.8 s late, and the
slot sits idle meanwhile. Instead each service keeps the times its recent jobs took
(:class:`LatencyModel`) and polls where that distribution says a poll is worth most.

Where to poll: a poll at time t, a gap g after the last, costs one request for every job still
running (the share S(t) of them) and saves waiting for the f(t)·g of them that finished within
the gap, each by about g/2. Weighing the two gives gaps of sqrt(2c·S/f) = sqrt(2c / hazard): polls
are dense where a job still running is likely to end soon, and sparse early on and far in the tail.
:meth:`LatencyModel.schedule` places ``polls_to_tail`` polls (:data:`POLLS_TO_TAIL` with few jobs
in flight) at equal steps of the integral of sqrt(hazard) up to the :data:`TAIL_QUANTILE`. For
log-normal 1 s jobs (σ 0.5) and 24 polls to the tail (64 jobs in flight, a busy process) this
notices a job ~65 ms after it ends for ~7 polls made, where 12 at equal steps of probability up to
the p90, then backing off, took ~94 ms for as many (a simulation of 40,000 jobs; the test
``test_log_normal_jobs_are_noticed_sooner…``; bench/throughput.py measures it on a run).

With many jobs in flight each gets fewer polls (a budget of polls per job in flight,
:class:`CpuGauge`), so the polls a second stay bounded, and more so when this process is short of
CPU. Past the tail quantile the waits grow ×:data:`BACKOFF` up to ``poll_max_s``. Until
:data:`MIN_SAMPLES` jobs have been seen, a job is polled at once and then with the plain backoff
from ``poll_initial_s``.

A job's time is known only to lie between its last "not yet" and its "done" answer; the midpoint
is what is learnt (learning the "done" times alone would teach the schedule its own poll times).
Polls are counted per job (:class:`PollCounts`); a job's polls are bounded by ``polls_to_tail`` plus
the backoff's (and :data:`SHORTENED_POLLS` more, with few jobs in flight: then the back-off first
stops short of ``poll_max_s``, :meth:`PollCounts.longest_wait`, so a run's last jobs are noticed soon
after they end), whatever the service does.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from pipeline.errors import ProviderError

POLLS_TO_TAIL = 64  # polls placed up to the tail quantile for a job, with few jobs in flight (~17 made for 1 s jobs)
POLL_BUDGET = 1536  # with more jobs in flight, polls to the tail per job are a budget divided by the jobs in flight
# (down to MIN_POLLS_TO_TAIL): a service's polls per second then stay bounded whatever its concurrency. The budget is
# this while the process is busy: at C = 64 polls at ~14 requests an image were the largest share of a run's CPU, and
# one core could not keep the slots busy (bench/throughput.py, models b and c at C = 64) ...
MAX_POLL_BUDGET = 4096  # ... and grows up to this while the process has CPU to spare (CpuGauge)
CPU_SPARE, CPU_SHORT = 0.6, 0.8  # the share of one core the process used over a window: below, the budget grows; above, it shrinks
BUDGET_STEP = 1.25  # by this factor, at most once a window
GAUGE_WINDOW_S = 1.0
MIN_POLLS_TO_TAIL = 16
TAIL_QUANTILE = 0.99  # past this the waits back off
CURVE_STEPS = 40  # the distribution up to the tail, in this many steps of probability, for the hazard
SHORTENED_POLLS = 32  # past the tail, with few jobs in flight, this many polls wait at most PollCounts.longest_wait
BACKOFF = 1.5  # each wait this much longer than the last, past the tail quantile (and before MIN_SAMPLES are known)
MIN_SAMPLES = 8  # job times seen before the schedule follows them
WINDOW = 256  # the most recent job times kept per service
MIN_GAP_S = 0.005  # never two polls of one job closer than this

T = TypeVar("T")


class LatencyModel:
    """The times a service's recent jobs took, submission to finish (seconds)."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._sorted: list[float] | None = None
        self._curve_cache: tuple[list[float], list[float]] | None = None

    def observe(self, seconds: float) -> None:
        self._recent.append(max(0.0, seconds))
        self._sorted = self._curve_cache = None

    def __len__(self) -> int:
        return len(self._recent)

    def quantile(self, p: float) -> float:
        if self._sorted is None:
            self._sorted = sorted(self._recent)
        values = self._sorted
        position = p * (len(values) - 1)
        low = int(position)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (position - low)

    def _curve(self) -> tuple[list[float], list[float]]:
        """Times at :data:`CURVE_STEPS` equal steps of probability up to the tail quantile, and the integral
        of sqrt(hazard) at each: sqrt(Δt / S) summed over the steps (S the share still running, mid-step)."""
        if self._curve_cache is None:
            steps = [TAIL_QUANTILE * k / CURVE_STEPS for k in range(CURVE_STEPS + 1)]
            times = [self.quantile(q) for q in steps]
            weight = [0.0]
            for k in range(CURVE_STEPS):
                running = 1.0 - (steps[k] + steps[k + 1]) / 2
                weight.append(weight[-1] + math.sqrt(max(0.0, times[k + 1] - times[k]) / running))
            self._curve_cache = times, weight
        return self._curve_cache

    def poll_points(self, polls_to_tail: int) -> list[float]:
        """``polls_to_tail`` times up to the tail quantile, at equal steps of the integral of sqrt(hazard)."""
        times, weight = self._curve()
        total = weight[-1]
        if total <= 0.0:  # every job took the same time
            return [times[-1]]
        points = []
        for i in range(1, polls_to_tail + 1):
            target = total * i / polls_to_tail
            k = min(max(1, bisect.bisect_left(weight, target)), CURVE_STEPS)
            span = weight[k] - weight[k - 1]
            share = (target - weight[k - 1]) / span if span > 0 else 1.0
            points.append(times[k - 1] + (times[k] - times[k - 1]) * share)
        return points

    def schedule(self, initial_s: float, max_s: float, polls_to_tail: int = POLLS_TO_TAIL,
                 longest_wait: Callable[[], float] | None = None) -> Iterator[float]:
        """Times since submission at which to poll one job: increasing, endless (the caller's deadline ends it).
        Past the tail quantile the waits grow up to ``max_s``; for the next :data:`SHORTENED_POLLS` polls only
        up to ``longest_wait()`` (read at each poll) where that is shorter, but never below the last wait before
        the tail (a slow service is not asked faster than it was)."""
        at = 0.0
        if len(self) >= MIN_SAMPLES:
            gap = initial_s
            for point in self.poll_points(polls_to_tail):
                if point >= at + MIN_GAP_S:
                    gap = point - at
                    at = point
                    yield at
            delay = max(gap, MIN_GAP_S)
        else:  # nothing learnt yet: at once, then the plain backoff
            yield at
            delay = initial_s
        floor, shortened = delay, 0
        while True:
            at += delay
            yield at
            longest = max_s
            if longest_wait is not None and shortened < SHORTENED_POLLS:  # a bounded number: a job stuck at the service
                longest = min(max_s, max(floor, longest_wait()))  # is still asked less and less often
                shortened += longest < max_s
            delay = min(delay * BACKOFF, max(longest, MIN_GAP_S))


class CpuGauge:
    """The poll budget of this process: :data:`POLL_BUDGET` while it is short of CPU (more polls would
    slow everything else it does, and notice jobs later, not sooner), up to :data:`MAX_POLL_BUDGET`
    while it has some to spare. Judged from the CPU the whole process used (all its threads) over
    each :data:`GAUGE_WINDOW_S`, when the budget is asked for; a GIL-bound process has one core."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, cpu: Callable[[], float] = time.process_time) -> None:
        self.clock, self.cpu = clock, cpu
        self.budget = POLL_BUDGET
        self._since, self._cpu_since = clock(), cpu()

    def poll_budget(self) -> int:
        now = self.clock()
        if now - self._since >= GAUGE_WINDOW_S:
            used = self.cpu()
            share = (used - self._cpu_since) / (now - self._since)
            if share < CPU_SPARE:
                self.budget = min(MAX_POLL_BUDGET, round(self.budget * BUDGET_STEP))
            elif share > CPU_SHORT:
                self.budget = max(POLL_BUDGET, round(self.budget / BUDGET_STEP))
            self._since, self._cpu_since = now, used
        return self.budget


PROCESS_GAUGE = CpuGauge()  # one per process: every polled service shares the process's CPU


@dataclass
class PollCounts:
    """Status polls made by one service: how many jobs, how many polls, the most for one job."""

    jobs: int = 0
    polls: int = 0
    most: int = 0
    in_flight: int = 0  # jobs being polled now
    gauge: CpuGauge = field(default_factory=lambda: PROCESS_GAUGE, repr=False)

    def polls_to_tail(self) -> int:
        """Polls to the tail quantile for a job starting now: :data:`POLLS_TO_TAIL`, fewer with many jobs in flight (the
        gauge's budget of polls, shared by the jobs in flight)."""
        if self.in_flight * POLLS_TO_TAIL <= POLL_BUDGET:  # few in flight: the gauge is not needed
            return POLLS_TO_TAIL
        return max(MIN_POLLS_TO_TAIL, min(POLLS_TO_TAIL, self.gauge.poll_budget() // self.in_flight))

    def longest_wait(self, max_s: float) -> float:
        """The longest wait between two polls of a job past the tail quantile, now: ``max_s`` with many jobs in flight,
        shorter with few, so the last jobs of a run are not noticed seconds late (a 5 s job at the end of a
        run was seen 1.6 s after it finished, while its prompt's next image waited: bench/throughput.py).
        Past it the service is then asked at most ~POLL_BUDGET / (POLLS_TO_TAIL x max_s) times a second
        (and never more often per job than before it: :meth:`LatencyModel.schedule`)."""
        return max_s * min(1.0, self.in_flight * POLLS_TO_TAIL / POLL_BUDGET)

    def add(self, polls: int) -> None:
        self.jobs += 1
        self.polls += polls
        self.most = max(self.most, polls)

    @property
    def per_job(self) -> float:
        return self.polls / self.jobs if self.jobs else 0.0


async def poll_by_expectation(check: Callable[[], Awaitable[T | None]], model: LatencyModel, counts: PollCounts, *,
                              since: float, deadline: float, initial_s: float, max_s: float,
                              timed_out: Callable[[], ProviderError]) -> T:
    """Call ``check`` at the times ``model`` expects (from ``since``, a ``time.monotonic()``) until it
    returns something; ``timed_out()`` is raised when the next poll would pass ``deadline``."""
    polls = 0
    pending_at = 0.0  # the last time (since submission) the job was seen unfinished
    counts.in_flight += 1
    try:
        for at in model.schedule(initial_s, max_s, counts.polls_to_tail(), lambda: counts.longest_wait(max_s)):
            wait = since + at - time.monotonic()
            if time.monotonic() + max(0.0, wait) > deadline:
                raise timed_out()
            if wait > 0:
                await asyncio.sleep(wait)
            polls += 1
            result = await check()
            seen = time.monotonic() - since
            if result is not None:
                model.observe((pending_at + seen) / 2)
                return result
            pending_at = seen
        raise AssertionError("unreachable")  # pragma: no cover  (the schedule never ends)
    finally:
        counts.in_flight -= 1
        counts.add(polls)
