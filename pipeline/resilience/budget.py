"""The budget guard: an optional spending cap per run, and one across the runs of its project.

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
    # The run's project: its cap across all its runs, and what its other runs had spent when this one started.
    project_cap_usd: float | None = None
    project_spent_usd: float = 0.0
    project_name: str = ""

    def reserve(self, estimate_usd: float, what: str) -> None:
        if self.cap_usd is not None and self.spent_usd + self.reserved_usd + estimate_usd > self.cap_usd + 1e-12:
            raise BudgetReached(
                f"budget of ${self.cap_usd:.4f} reached: ${self.spent_usd:.4f} spent, ${self.reserved_usd:.4f} in flight, "
                f"and {what} would cost about ${estimate_usd:.4f}; resume with a higher budget to continue")
        in_project = self.project_spent_usd + self.spent_usd + self.reserved_usd + estimate_usd
        if self.project_cap_usd is not None and in_project > self.project_cap_usd + 1e-12:
            raise BudgetReached(
                f"project {self.project_name!r}'s cap of ${self.project_cap_usd:.4f} reached: its runs spent "
                f"${self.project_spent_usd + self.spent_usd:.4f}, ${self.reserved_usd:.4f} is in flight, and {what} would cost "
                f"about ${estimate_usd:.4f}; raise the project's cap (Projects page) and resume to continue")
        self.reserved_usd += estimate_usd

    def release(self, estimate_usd: float) -> None:
        self.reserved_usd = max(0.0, self.reserved_usd - estimate_usd)

    def settle(self, estimate_usd: float, actual_usd: float | None) -> None:
        self.release(estimate_usd)
        self.spent_usd += actual_usd or 0.0
