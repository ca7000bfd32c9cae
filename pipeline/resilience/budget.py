"""The budget guard: an optional spending cap per run.

Before every call the caller reserves the call's expected cost (from the price table); if what
is spent plus what is reserved plus this call would pass the cap, :class:`BudgetReached` is
raised instead and the run pauses, resumable with a higher cap. A reservation is settled with
the call's real cost once it is recorded, or released if the call failed, so concurrent workers
never overshoot together.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import BudgetReached


@dataclass
class Budget:
    cap_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0

    def reserve(self, estimate_usd: float, what: str) -> None:
        if self.cap_usd is not None and self.spent_usd + self.reserved_usd + estimate_usd > self.cap_usd + 1e-12:
            raise BudgetReached(
                f"budget of ${self.cap_usd:.4f} reached: ${self.spent_usd:.4f} spent, ${self.reserved_usd:.4f} in flight, "
                f"and {what} would cost about ${estimate_usd:.4f}; resume with a higher budget to continue")
        self.reserved_usd += estimate_usd

    def release(self, estimate_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)

    def settle(self, estimate_usd: float, actual_usd: float | None) -> None:
        self.release(estimate_usd)
        self.spent_usd += actual_usd or 0.0
