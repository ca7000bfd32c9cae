"""The one retry policy: which failures are worth another attempt, and how long to wait first.

Modelled on openai-python's policy, with full jitter (AWS "Exponential Backoff and Jitter"):

- retried: connection errors, timeouts, malformed bodies, 408, 409, 429 and 5xx, unless the
  service said otherwise (``x-should-retry``, fal's ``X-Fal-Retryable``, Cloudflare's 3036);
- never retried: 400, 401, 403, 404, 422 and content-policy blocks;
- the wait is the service's own ``retry-after-ms`` / ``Retry-After`` / Gemini ``RetryInfo``
  when it gave one, else ``uniform(0, min(max_delay_s, initial_delay_s * 2**(attempt-1)))``;
- a requested wait longer than ``max_retry_after_s`` is not sat out: the provider counts as
  exhausted for this call and the chain moves on (the provider stays paused until then).

SDK and transport retries are off everywhere, so these attempts are the only ones and each is
logged and priced once.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import defaults_from, from_table
from pipeline.errors import ConfigError, ContentBlocked, ProviderError

NEVER_RETRIED_STATUSES = frozenset({400, 401, 403, 404, 422})


@dataclass(frozen=True)
@defaults_from("resilience", "retry")
class RetryPolicy:
    max_attempts: int  # per provider and call, the first one included (429s counted apart)
    rate_limit_attempts: int  # 429s tolerated per provider and call: back-pressure, not failure
    initial_delay_s: float
    max_delay_s: float
    max_retry_after_s: float

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "RetryPolicy":
        policy = from_table(cls, values)
        if policy.max_attempts < 1:
            raise ConfigError(f"retry.max_attempts must be at least 1, not {policy.max_attempts}")
        return policy

    def retryable(self, error: ProviderError) -> bool:
        """Whether the failure may succeed if the same request is sent again.

        ``error.retryable`` is set where the error is built, from the status (408, 409, 429,
        5xx), the failure (connection, timeout, malformed body) and the service's own hints.
        """
        if isinstance(error, ContentBlocked) or error.http_status in NEVER_RETRIED_STATUSES:
            return False
        return error.retryable

    def delay(self, attempt: int, error: ProviderError, rng: random.Random | None = None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``; None when the service asks for longer than allowed."""
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_retry_after_s else None
        ceiling = min(self.max_delay_s, self.initial_delay_s * 2 ** (attempt - 1))
        return (rng or random).uniform(0, ceiling)
