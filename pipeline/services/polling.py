"""Polling by expectation: ask about a job when it is likely to have finished, not on a fixed clock.

A polled service (fal without its status stream, Leonardo, ComfyUI) tells us a job is done only
when asked. A fixed backoff (0.25 s ×1.5 up to 2 s) notices a 1 s job 0.2–0.8 s late, and the
slot sits idle meanwhile. Instead each service keeps the times its recent jobs took
(:class:`LatencyModel`) and polls at the quantiles of that distribution: :data:`POLLS_TO_P90`
polls spread evenly in probability up to its p90, so polls are dense where jobs finish and the
expected delay in noticing one is about 1/(2 x POLLS_TO_P90) of the distribution's spread. With
many jobs in flight each gets fewer (:data:`POLL_BUDGET`), so the polls a second stay bounded. Past
the p90 the waits grow ×:data:`BACKOFF` up to ``poll_max_s``. Until :data:`MIN_SAMPLES` jobs have
been seen, a job is polled at once and then with the plain backoff from ``poll_initial_s``.

A job's time is known only to lie between its last "not yet" and its "done" answer; the midpoint
is what is learnt (learning the "done" times alone would teach the schedule its own poll times).
Polls are counted per job (:class:`PollCounts`); a job's polls are bounded by POLLS_TO_P90 plus
the backoff's (and POLLS_TO_P90 more, with few jobs in flight: then the back-off first stops short
of ``poll_max_s``, :meth:`PollCounts.longest_wait`, so a run's last jobs are noticed soon after they
end), whatever the service does.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import ProviderError

POLLS_TO_P90 = 32  # polls spread over the latency distribution up to its 90th percentile, with few jobs in flight
POLL_BUDGET = 768  # with more jobs in flight, polls to the p90 per job are this divided by the jobs in flight (down to
# MIN_POLLS_TO_P90): a service's polls per second then stay bounded whatever its concurrency. At C = 64 polls at 32
# per job were ~14 requests an image, the largest share of a run's CPU: one core could not keep the slots busy
# (bench/throughput.py, models b and c at C = 64).
MIN_POLLS_TO_P90 = 8
TAIL_QUANTILE = 0.9  # past this the waits back off
BACKOFF = 1.5  # each wait this much longer than the last, past the p90 (and before MIN_SAMPLES are known)
MIN_SAMPLES = 8  # job times seen before the schedule follows them
WINDOW = 256  # the most recent job times kept per service
MIN_GAP_S = 0.005  # never two polls of one job closer than this

T = TypeVar("T")


class LatencyModel:
    """The times a service's recent jobs took, submission to finish (seconds)."""

    def __init__(self) -> None:
        self._recent: deque[float] = deque(maxlen=WINDOW)
        self._sorted: list[float] | None = None

    def observe(self, seconds: float) -> None:
        self._recent.append(max(0.0, seconds))
        self._sorted = None

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

    def schedule(self, initial_s: float, max_s: float, polls_to_p90: int = POLLS_TO_P90,
                 longest_wait: Callable[[], float] | None = None) -> Iterator[float]:
        """Times since submission at which to poll one job: increasing, endless (the caller's deadline ends it).
        Past the p90 the waits grow up to ``max_s``; for the next :data:`POLLS_TO_P90` polls only up to
        ``longest_wait()`` (read at each poll) where that is shorter, but never below the last wait before
        the p90 (a slow service is not asked faster than it was)."""
        at = 0.0
        if len(self) >= MIN_SAMPLES:
            points = sorted({round(self.quantile(TAIL_QUANTILE * i / polls_to_p90), 4) for i in range(1, polls_to_p90 + 1)})
            gap = initial_s
            for point in points:
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
            if longest_wait is not None and shortened < POLLS_TO_P90:  # a bounded number: a job stuck at the service
                longest = min(max_s, max(floor, longest_wait()))  # is still asked less and less often
                shortened += longest < max_s
            delay = min(delay * BACKOFF, max(longest, MIN_GAP_S))


@dataclass
class PollCounts:
    """Status polls made by one service: how many jobs, how many polls, the most for one job."""

    jobs: int = 0
    polls: int = 0
    most: int = 0
    in_flight: int = 0  # jobs being polled now

    def polls_to_p90(self) -> int:
        """Polls to the p90 for a job starting now: :data:`POLLS_TO_P90`, fewer with many jobs in flight (:data:`POLL_BUDGET`)."""
        return max(MIN_POLLS_TO_P90, min(POLLS_TO_P90, POLL_BUDGET // max(1, self.in_flight)))

    def longest_wait(self, max_s: float) -> float:
        """The longest wait between two polls of a job past the p90, now: ``max_s`` with many jobs in flight,
        shorter with few, so the last jobs of a run are not noticed seconds late (a 5 s job at the end of a
        run was seen 1.6 s after it finished, while its prompt's next image waited: bench/throughput.py).
        Past the p90 the service is then asked at most ~POLL_BUDGET / (POLLS_TO_P90 x max_s) times a second
        (and never more often per job than at the p90: :meth:`LatencyModel.schedule`)."""
        return max_s * min(1.0, self.in_flight * POLLS_TO_P90 / POLL_BUDGET)

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
        for at in model.schedule(initial_s, max_s, counts.polls_to_p90(), lambda: counts.longest_wait(max_s)):
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
