"""Requests per token: a token bucket per caller, so one script cannot starve the others (429)."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = max(rate_per_s, 0.001), max(1, burst)
        self._lock = threading.Lock()
        self._buckets: dict[int, tuple[float, float]] = {}  # caller -> (tokens, at)

    def take(self, caller: int) -> float:
        """Spend one request of ``caller``'s; 0.0 if allowed, else the seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / self.rate
