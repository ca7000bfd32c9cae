"""What every request reaches through ``request.app.state.ctx``: settings, the database, the runner."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.engine import Engine

from pipeline.api.cache import PageCache
from pipeline.api.metrics import RequestMetrics
from pipeline.api.ratelimit import RateLimiter
from pipeline.api.settings import ApiSettings
from pipeline.api.tokens import Authenticator
from pipeline.config import Settings
from pipeline.runs.background import BackgroundRunner


@dataclass
class ApiContext:
    settings: Settings
    api: ApiSettings
    engine: Engine
    runner: BackgroundRunner | None  # None: runs are queued for another process's runner
    authenticate: Authenticator = field(init=False)
    limiter: RateLimiter = field(init=False)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    pages: PageCache = field(default_factory=PageCache)  # stopped runs' items, until a review

    def __post_init__(self) -> None:
        self.authenticate = Authenticator(self.engine)
        self.limiter = RateLimiter(self.api.rate_per_s, self.api.rate_burst)

    def wake_runner(self) -> None:
        if self.runner is not None:
            self.runner.wake()


def ctx_of(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx
