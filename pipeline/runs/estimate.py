"""What a run will cost before it is launched: the number of calls and a price from the table.

The figures are upper bounds: a prompt stops early when it reaches the target score or the
refiner changes nothing, and a failed prompt makes fewer calls. A service that reports its own
cost may bill differently from the table; components with no price in the table are named in
``unpriced`` rather than counted as free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pipeline import prices, registry
from pipeline.config import Settings
from pipeline.prompts.promptset import PromptSpec, parse_size
from pipeline.runs.records import RunConfig


@dataclass(frozen=True)
class Estimate:
    prompts: int
    generations: int
    evaluations: int
    refinements: int
    cost_usd: float
    unpriced: tuple[str, ...]  # components without a price in the table

    @property
    def calls(self) -> int:
        return self.generations + self.evaluations + self.refinements


def estimate_run(settings: Settings, config: RunConfig, prompts: Sequence[PromptSpec]) -> Estimate:
    n, iterations = len(prompts), config.iterations
    generations, evaluations, refinements = n * iterations, n * iterations, n * (iterations - 1)
    unpriced: list[str] = []

    def priced(kind: str, name: str, width: int = 0, height: int = 0) -> float:
        cls = getattr(registry, kind).get_class(name)
        table = settings.component(kind, cls.name)
        cost = prices.table_cost(table, str(table.get("model", "")), width, height)
        if cost is None:
            if name not in unpriced:
                unpriced.append(name)
            return 0.0
        return cost

    # Generations are priced on the chain's first provider, at each prompt's own size.
    default_size = settings.prompt.default_size
    image_cost = 0.0
    for p in prompts:
        size = parse_size(p.size or default_size)
        width, height = size if isinstance(size, tuple) else (1024, 1024)
        image_cost += priced("providers", config.providers[0], width, height) * iterations
    cost = image_cost + priced("judges", config.judge) * evaluations + priced("refiners", config.refiner) * refinements
    return Estimate(n, generations, evaluations, refinements, round(cost, 6), tuple(unpriced))
