"""Submit ahead: keep a few requests queued at a service beyond our slots, so that a slot the
service frees never waits for our next submission (nor for us to notice, by polling, that the
job in it finished).

Only for services that queue on their side and say so: fal answers a submission with ``IN_QUEUE``
and its ``queue_position`` (0 = next). The number ahead starts at 1 and adapts, judged every
:data:`WINDOW` submissions by the positions they were given:

- positions mostly 0 (the queue ran dry between our submissions): one more ahead, up to the
  service's ``submit_ahead`` setting, or ``submit_ahead_per_slot`` x ``max_concurrency`` where that
  is more (the requests we have not yet noticed finished grow with the slots: at C = 64, 1 s jobs,
  8 ahead kept a queueing service's slots 0.84 busy, 16 ahead 0.895; bench/throughput.py, model b);
- positions still all 0 for :data:`PATIENCE` windows with the most ahead (``queue_position`` not
  growing however many we add: the service runs our extra requests instead of queueing them):
  it stops;
- a 429 on a submission, or a submission answer with no ``queue_position``: it stops at once.

A window of 0s alone cannot tell a service that does not queue from a queue we let run dry
(both answer 0), hence growing first and stopping only at the most. A request queued ahead is
billed even when the run is cancelled before its turn: at most that many images.

Once stopped it stays stopped for the service object's life (one run). The rate limiter reads
:meth:`SubmitAhead.slots` as the calls it may have in flight beyond ``max_concurrency``.
"""

from __future__ import annotations

import logging
import math
from typing import Any

log = logging.getLogger("pipeline.services.ahead")
WINDOW = 8  # submissions judged together
DRY_SHARE = 0.5  # this share of a window at position 0 means the queue ran dry: one more ahead
PATIENCE = 2  # windows of 0s with the most ahead before concluding the service does not queue


class SubmitAhead:
    def __init__(self, service: str, most: int, per_slot: float = 0.0) -> None:
        self.service, self.most = service, max(0, most)
        self._least, self._per_slot = self.most, max(0.0, per_slot)
        self.ahead = min(1, self.most)
        self.stopped_because = "" if self.most else "not enabled (submit_ahead = 0)"
        self._positions: list[int] = []
        self._flat = 0  # windows in a row with the most ahead and no position above 0

    def slots(self, max_concurrency: int) -> int:
        """Calls the limiter may have in flight beyond ``max_concurrency`` (which sets the most ahead)."""
        if self._least:
            self.most = max(self._least, math.ceil(self._per_slot * max_concurrency))
            self.ahead = min(self.ahead, self.most)
        return 0 if self.stopped_because else self.ahead

    def stop(self, why: str) -> None:
        if not self.stopped_because:
            self.stopped_because = why
            if self.ahead:
                log.info("%s: no longer submitting ahead: %s", self.service, why)
            self.ahead = 0

    def refused(self, status: int) -> None:
        """A submission was answered ``status``; a 429 means the service does not queue our extra requests."""
        if status == 429:
            self.stop("the service answered 429 (it does not queue beyond its slots)")

    def accepted(self, answer: Any) -> None:
        """A submission's answer: its ``queue_position`` tells whether the service queues."""
        if self.stopped_because:
            return
        position = answer.get("queue_position") if isinstance(answer, dict) else None
        if not isinstance(position, int) or isinstance(position, bool):
            self.stop("the service does not report a queue_position")
            return
        self._positions.append(position)
        if len(self._positions) < WINDOW:
            return
        positions, self._positions = self._positions, []
        self._flat = self._flat + 1 if self.ahead >= self.most and max(positions) == 0 else 0
        if self._flat >= PATIENCE:
            self.stop(f"queue_position stayed at 0 with {self.ahead} requests ahead (the service does not queue them)")
        elif sum(p == 0 for p in positions) >= DRY_SHARE * WINDOW and self.ahead < self.most:
            self.ahead += 1
