"""The API's settings: the ``[api]`` table of defaults.toml (overridable like every other table)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import Settings, defaults_from, from_table


@dataclass(frozen=True)
@defaults_from("api")
class ApiSettings:
    host: str
    port: int
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    rate_per_s: float
    rate_burst: int
    runs_page_size: int
    runs_max_page_size: int
    items_page_size: int
    items_max_page_size: int
    generate_wait_s: float
    idempotency_hours: float
    events_poll_s: float
    events_heartbeat_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "ApiSettings":
        return from_table(cls, settings.section("api"))
