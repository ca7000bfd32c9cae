"""Quota signals: OpenAI's x-ratelimit-* headers read from the emulator, and calls slowing down before the limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from pipeline import quotas, registry
from pipeline.components import GenerationRequest
from pipeline.config import Settings
from pipeline.resilience.routing import ServiceChain, member_for
from tests.emulators import openai, running

FAST = {"timeout_s": 10.0, "poll_interval_s": 0.01}


@pytest.fixture(autouse=True)
def fresh_board() -> None:
    quotas.board.reset()
    quotas.board.persist_to(None)


def test_durations_and_headers_read_as_openai_writes_them() -> None:
    assert [quotas.parse_duration(t) for t in ("6m0s", "20ms", "1h2m3.5s", "1.5", "soon")] == [360.0, 0.02, 3723.5, 1.5, None]
    read = quotas.parse_ratelimit_headers({"X-RateLimit-Limit-Requests": "60", "x-ratelimit-remaining-requests": "59",
                                           "x-ratelimit-reset-requests": "1s", "x-ratelimit-remaining-tokens": "many",
                                           "x-ratelimit-limit-tokens": "150000", "content-type": "application/json"})
    assert read["requests"] == quotas.Allowance(60, 59, 1.0)
    assert read["tokens"] == quotas.Allowance(150000, None, None)  # an unreadable value is left out, not guessed


def _provider(emulator: openai.OpenAIEmulator, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", openai.KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{emulator.url}/v1")
    return registry.providers.get_class("openai")({**Settings.from_env().component("providers", "openai"), **FAST})


def test_the_remaining_quota_is_read_from_each_openai_answer_and_kept_for_the_providers_page(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    quotas.board.persist_to(tmp_path / "quotas.json")
    with running(openai.OpenAIEmulator()) as emulator:
        provider = _provider(emulator, monkeypatch)
        for _ in range(3):
            asyncio.run(provider.generate(GenerationRequest(prompt="a fox", width=1024, height=1024, seed=1)))
    reading = quotas.board.latest("openai")
    assert reading is not None
    assert reading.allowances["requests"] == quotas.Allowance(500, 497, 12.0)
    assert reading.allowances["tokens"] == quotas.Allowance(200_000, 200_000 - 3 * 4210, 360.0)
    quotas.board.flush()
    (saved,) = quotas.load(tmp_path / "quotas.json")  # what another process (the dashboard) reads
    assert saved.service == "openai" and saved.allowances["requests"].remaining == 497


def test_calls_slow_down_before_the_limit_not_after_a_429(monkeypatch: pytest.MonkeyPatch) -> None:
    with running(openai.OpenAIEmulator()) as emulator:
        emulator.limit_requests, emulator.remaining_requests, emulator.reset_requests = 100, 30, "2s"
        provider = _provider(emulator, monkeypatch)
        settings = Settings.from_env()
        member = member_for(settings, provider)
        chain = ServiceChain("provider", [member])
        request = GenerationRequest(prompt="a fox", width=1024, height=1024, seed=1)

        async def send(p):  # type: ignore[no-untyped-def]
            return await p.generate(request)

        asyncio.run(chain.call(send))  # 29 of 100 left: plenty, no pause
        assert member.limiter.paused_until <= time.monotonic()
        emulator.remaining_requests = 6  # the next answer says 5 of 100 left: within the last 10 %
        asyncio.run(chain.call(send))
        pause = member.limiter.paused_until - time.monotonic()
        assert 0.5 < pause <= 2.0  # half the reserve left: about half of the 2 s until the reset
        assert quotas.pause_before_limit(quotas.board.latest("openai"), reserve=0.1, now=time.time() + 3) == 0.0  # reset passed


def test_no_pause_while_the_allowance_is_plentiful_and_a_full_wait_at_zero() -> None:
    reading = quotas.QuotaReading("openai", at=1000.0, allowances={"requests": quotas.Allowance(60, 30, 10.0)})
    assert quotas.pause_before_limit(reading, reserve=0.1, now=1000.0) == 0.0
    reading.allowances["requests"] = quotas.Allowance(60, 0, 10.0)
    assert quotas.pause_before_limit(reading, reserve=0.1, now=1004.0) == pytest.approx(6.0)
    assert quotas.pause_before_limit(reading, reserve=0.0, now=1004.0) == 0.0  # reserve 0: switched off
