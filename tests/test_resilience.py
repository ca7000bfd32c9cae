"""Resilience under injected faults, against the loopback emulators: retries, Retry-After,
circuit breakers, fallback chains, pool routing, content blocks, the budget guard and a
SIGKILL mid-run followed by resume.

The first provider is the user-deployed ``worker`` (one HTTP request per generation, so its
emulator's request count is exactly the number of attempts); the healthy second one is
Cloudflare Workers AI.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import col, select

from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.resilience import breaker
from pipeline.resilience.retry import RetryPolicy
from pipeline.runs.runner import RunExecutor
from pipeline.store.db import open_database, session
from pipeline.store.models import BreakerEvent, Evaluation, Iteration, PromptElement, ProviderCall, Run, RunItem
from tests.conftest import PYTHON, ROOT, create_run, database_rows, make_prompts, run_cli, subprocess_env, write_prompt_set
from tests.emulators import Emulator, cloudflare, openai, running, worker

FAST = """
[resilience.retry]
initial_delay_s = 0.01
max_delay_s = 0.05
max_retry_after_s = 5
[resilience.breaker]
cooldown_s = {cooldown}
[resilience.limits]
grow_after = 2
[providers.worker]
# Under the emulators' 1.5 s 'timeout' fault, with room for a loaded machine: at 0.5 s a request the
# emulator had not yet read timed out on the client too, and the log had rows the emulator never saw.
timeout_s = {worker_timeout_s}
[providers.cloudflare]
timeout_s = 5
"""


@pytest.fixture
def two_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[worker.WorkerEmulator, Emulator]]:
    """The worker emulator (the first provider, faults injected) and a healthy Cloudflare one."""
    with running(worker.WorkerEmulator()) as w, running(cloudflare.CloudflareEmulator()) as cf:
        for k, v in {"WORKER_URL": f"{w.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "POST",
                     "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT,
                     "CLOUDFLARE_BASE_URL": cf.url}.items():
            monkeypatch.setenv(k, v)
        yield w, cf


def fast_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cooldown: float = 30.0, extra: str = "",
                  worker_timeout_s: float = 1.0) -> Settings:
    config = tmp_path / "fast.toml"
    config.write_text(FAST.format(cooldown=cooldown, worker_timeout_s=worker_timeout_s) + extra)
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    return Settings.from_env()


def execute(settings: Settings, run_id: int, *, during=None) -> object:  # type: ignore[no-untyped-def]
    engine = open_database(settings)

    async def main():  # type: ignore[no-untyped-def]
        executor = RunExecutor(engine, settings, run_id)
        if during is None:
            return await executor.execute()
        watcher = asyncio.create_task(during())
        try:
            return await executor.execute()
        finally:
            watcher.cancel()

    try:
        return asyncio.run(main())
    finally:
        engine.dispose()


def run_on_both(settings: Settings, tmp_path: Path, prompts: int, **config) -> object:  # type: ignore[no-untyped-def]
    """Create and execute a run on the worker → cloudflare chain, one prompt at a time by default."""
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(prompts), tmp_path, providers=["worker", "cloudflare"],
                        iterations=1, **{"concurrency": 1, **config})
    engine.dispose()
    return execute(settings, run_id)


def generate_calls(engine, provider: str) -> list[ProviderCall]:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        return list(s.exec(select(ProviderCall).where(ProviderCall.provider == provider, ProviderCall.operation == "generate")
                           .order_by(col(ProviderCall.id))))


# ---- the retry policy itself ----------------------------------------------------------------
def test_the_policy_retries_transient_failures_and_never_client_errors_or_blocks() -> None:
    policy = RetryPolicy()
    from pipeline.errors import ContentBlocked

    for status in (408, 409, 429, 500, 502, 503, 504, 529):
        assert policy.retryable(ProviderError("x", http_status=status, retryable=True)), status
    for status in (400, 401, 403, 404, 422):  # even if a service claimed otherwise
        assert not policy.retryable(ProviderError("x", http_status=status, retryable=True)), status
    assert not policy.retryable(ContentBlocked("no", http_status=200))
    assert policy.retryable(ProviderError("reset", kind="connection", retryable=True))
    # Full jitter: uniform(0, min(max, initial * 2^(n-1))); a service's own delay wins, but not past the cap.
    rng = random.Random(1)
    delays = [policy.delay(n, ProviderError("x", retryable=True), rng) for n in (1, 2, 3, 4, 5, 6)]
    assert all(0 <= d <= min(8.0, 0.5 * 2 ** (n - 1)) for d, n in zip(delays, (1, 2, 3, 4, 5, 6), strict=True))
    assert policy.delay(1, ProviderError("x", retryable=True, retry_after=2.5)) == 2.5
    assert policy.delay(1, ProviderError("x", retryable=True, retry_after=600)) is None  # over max_retry_after_s


def test_x_should_retry_from_the_service_overrides_the_status() -> None:
    import httpx

    from pipeline.services import wire

    request = httpx.Request("POST", "http://127.0.0.1/x")
    no = wire.status_error("svc", httpx.Response(503, headers={"x-should-retry": "false"}, request=request))
    yes = wire.status_error("svc", httpx.Response(400, headers={"x-should-retry": "true"}, request=request))
    assert (no.retryable, RetryPolicy().retryable(no)) == (False, False)
    assert yes.retryable and not RetryPolicy().retryable(yes)  # 400 is never retried, whatever the hint


# ---- the storm ------------------------------------------------------------------------------------
def test_storm_every_prompt_recorded_99_percent_completed_and_the_log_matches_the_emulators(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    # 2.5 s: at 1 s the CI's PostgreSQL pass once logged 3 timed-out requests that the emulator (a thread of this
    # loaded process) had not read by the run's end (401 rows against 398 requests).
    settings = fast_settings(tmp_path, monkeypatch, cooldown=0.5, worker_timeout_s=2.5)
    w.retry_after = {"retry-after-ms": "50", "Retry-After": "1"}  # retry-after-ms is the precise one and wins
    w.slow_s = 6.0  # a 'timeout' answer comes long after the 2.5 s client timeout, even on a loaded machine
    rng = random.Random(20261121)

    def storm(_req) -> str:  # type: ignore[no-untyped-def]
        u = rng.random()
        for fault, upto in (("500", 0.20), ("429", 0.30), ("timeout", 0.35), ("malformed", 0.37), ("blocked", 0.38)):
            if u < upto:
                return fault
        return "ok"

    w.plan = storm
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(200), tmp_path, providers=["worker", "cloudflare"],
                        iterations=2, concurrency=8)
    outcome = execute(settings, run_id)

    with session(engine) as s:
        statuses = collections.Counter(item.status for item in s.exec(select(RunItem)))
        assert sum(statuses.values()) == 200
        assert set(statuses) <= {"completed", "failed", "blocked"}, statuses  # 100 % in a recorded end state
        assert statuses["completed"] >= 198, statuses  # ≥ 99 %
        assert outcome.status == "completed"
        iterations = list(s.exec(select(Iteration).where(Iteration.status == "ok")))
        served = collections.Counter(it.provider for it in iterations)
        assert served["worker"] > 0 and served["cloudflare"] > 0  # the second provider caught what the first dropped
        for it in iterations:
            assert it.routing["served_by"] == it.provider
            assert all(skip["service"] == "worker" and (skip["reason"] == "circuit breaker open" or "attempts failed" in skip["reason"])
                       for skip in it.routing["skipped"])
            assert (it.provider == "cloudflare") == bool(it.routing["skipped"])

    # The call log agrees with what each emulator received, fault by fault.
    worker_calls = generate_calls(engine, "worker")
    assert len(worker_calls) == len(w.requests)
    assert len(generate_calls(engine, "cloudflare")) == len(cf.requests)
    faults = collections.Counter(w.served_faults)
    logged = collections.Counter(
        "500" if c.http_status == 500 else "429" if c.http_status == 429 else c.error_kind if c.outcome != "ok" else "ok"
        for c in worker_calls)
    assert logged == {"500": faults["500"], "429": faults["429"], "timeout": faults["timeout"],
                      "malformed": faults["malformed"], "blocked": faults["blocked"], "ok": faults["ok"]}
    outcomes = collections.Counter(c.outcome for c in worker_calls)
    assert outcomes["retried"] > 0 and outcomes["ok"] == faults["ok"]
    # No finished step was done twice.
    with session(engine) as s:
        ok_keys = [c.step_key for c in s.exec(select(ProviderCall).where(ProviderCall.outcome == "ok"))]
    assert len(ok_keys) == len(set(ok_keys))
    engine.dispose()


# ---- circuit breaker --------------------------------------------------------------------------------
def test_a_provider_that_dies_trips_its_breaker_within_5_failures_and_a_probe_brings_it_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch, cooldown=0.4)
    w.latency_s = cf.latency_s = 0.02
    healthy_requests = 12

    def dies_after_12(_req) -> str:  # type: ignore[no-untyped-def]
        if len(w.requests) == healthy_requests + 1:
            w.down = True
        return "ok"

    w.plan = dies_after_12
    failures_while_down: list[int] = []

    async def revive_when_open() -> None:
        b = breaker.board.get("providers/worker", breaker.BreakerSettings(cooldown_s=0.4))
        while b.state != "open":
            await asyncio.sleep(0.005)
        failures_while_down.append(len(w.requests) - healthy_requests)
        w.down = False

    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(120), tmp_path, providers=["worker", "cloudflare"], iterations=1, concurrency=4)
    outcome = execute(settings, run_id, during=revive_when_open)
    assert outcome.completed == 120

    with session(engine) as s:
        events = [(e.service, e.state, e.failures if e.state == "open" else None)
                  for e in s.exec(select(BreakerEvent).order_by(col(BreakerEvent.id)))]
        iterations = list(s.exec(select(Iteration).order_by(col(Iteration.finished_at))))
    assert events[:3] == [("providers/worker", "open", 5), ("providers/worker", "half_open", None), ("providers/worker", "closed", None)]
    # It opened on the 5th failure; requests already in flight (3 more workers) may have failed too.
    assert failures_while_down and failures_while_down[0] <= 5 + 3
    worker_errors = [c for c in generate_calls(engine, "worker") if c.outcome != "ok"]
    assert 5 <= len(worker_errors) <= 5 + 3 + 1  # + at most one failed probe
    # While it was open the fallback served; after the probe the worker serves again.
    providers_in_order = [it.provider for it in iterations]
    first_fallback = providers_in_order.index("cloudflare")
    assert "worker" in providers_in_order[first_fallback:]
    assert providers_in_order[-1] == "worker"
    skipped_open = [it for it in iterations if any(sk["reason"] == "circuit breaker open" for sk in it.routing.get("skipped", []))]
    assert skipped_open, "iterations served while the breaker was open say why the worker was skipped"
    engine.dispose()


def test_breaker_state_shows_on_the_providers_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    from streamlit.testing.v1 import AppTest

    w, _ = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    w.down = True
    assert run_on_both(settings, tmp_path, 8).completed == 8
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
    at.run()
    at.switch_page("pages/providers.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["service"]) == ["providers/worker"] and list(table["state"]) == ["open"]
    assert "5 consecutive failures" in table["why"][0]
    assert any("Not taking work right now: providers/worker" in x.value for x in at.warning)


# ---- Retry-After, 401/404, blocks ---------------------------------------------------------------------
def test_retry_after_is_obeyed_no_request_reaches_the_provider_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    w.retry_after = {"Retry-After": "1"}
    w.plan = lambda req: "429" if len(w.requests) <= 3 else "ok"
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(6), tmp_path, providers=["worker", "cloudflare"], iterations=1, concurrency=3)
    assert execute(settings, run_id).completed == 6
    limited = [r for r, f in zip(w.requests, w.served_faults, strict=True) if f == "429"]
    later = [r for r, f in zip(w.requests, w.served_faults, strict=True) if f != "429"]
    assert len(limited) == 3 and len(later) == 6 and not cf.requests  # retried on the same provider, no fallback
    assert min(r.at for r in later) >= max(r.at for r in limited) + 1.0 - 0.02
    with session(engine) as s:
        rows = list(s.exec(select(ProviderCall).where(ProviderCall.http_status == 429)))
    assert [(r.outcome, r.attempt, r.error_kind) for r in rows] == [("retried", 1, "rate_limited")] * 3
    engine.dispose()


@pytest.mark.parametrize(("fault", "kind"), [("401", "auth"), ("404", "not_found")])
def test_401_and_404_are_never_retried_and_move_to_the_next_provider(
        fault: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    w.fault = fault
    assert run_on_both(settings, tmp_path, 8).completed == 8
    engine = open_database(settings)
    calls = generate_calls(engine, "worker")
    assert len(calls) == len(w.requests) == 5  # one attempt per prompt, then the breaker opened: 5 refusals
    assert [(c.outcome, c.attempt, c.error_kind) for c in calls] == [("error", 1, kind)] * 5
    assert len(cf.requests) == 8
    with session(engine) as s:
        reasons = [it.routing["skipped"][0]["reason"] for it in s.exec(select(Iteration).order_by(col(Iteration.id)))]
    assert all(r.startswith(f"{kind}: worker answered HTTP {fault}") for r in reasons[:5])
    assert reasons[5:] == ["circuit breaker open"] * 3
    engine.dispose()


def test_a_400_is_not_retried_and_not_sent_elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    w.fault = "400"
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(2), tmp_path, providers=["worker", "cloudflare"], iterations=1)
    outcome = execute(settings, run_id)
    assert (outcome.failed, len(w.requests), len(cf.requests)) == (2, 2, 0)
    engine.dispose()


def test_a_block_is_rewritten_once_by_the_refiner_never_sent_to_the_fallback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    blocked_texts: set[str] = set()

    def block_first_sight(req) -> str:  # type: ignore[no-untyped-def]
        text = req.json()["prompt"]
        if "non-graphic" in text:
            return "ok"
        blocked_texts.add(text)
        return "blocked"

    w.plan = block_first_sight
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(3), tmp_path, providers=["worker", "cloudflare"], iterations=1)
    assert execute(settings, run_id).completed == 3
    assert not cf.requests
    with session(engine) as s:
        for it in s.exec(select(Iteration)):
            (rewrite,) = it.routing["rewrites"]
            assert rewrite["from"] in blocked_texts and rewrite["to"] == it.prompt_text and rewrite["blocked_by"] == "worker"
            assert "non-graphic" in it.prompt_text and it.provider == "worker"
        refine_rows = list(s.exec(select(ProviderCall).where(ProviderCall.operation == "refine")))
        assert sorted(r.step_key.rsplit("/", 1)[1] for r in refine_rows) == ["rewrite1"] * 3

    # With rewrites off, a block ends the prompt blocked, after one request and no fallback.
    w.requests.clear()
    run_id = create_run(engine, settings, make_prompts(2, title="again"), tmp_path, providers=["worker", "cloudflare"],
                        iterations=1, block_rewrites=0)
    outcome = execute(settings, run_id)
    assert (outcome.blocked, len(w.requests), len(cf.requests)) == (2, 2, 0)
    engine.dispose()


# ---- judge and refiner chains, pool routing --------------------------------------------------------
def test_a_judge_that_refuses_the_key_falls_back_to_the_next_judge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fast_settings(tmp_path, monkeypatch)
    with running(openai.OpenAIEmulator()) as emulator:
        monkeypatch.setenv("OPENAI_API_KEY", "not-the-key-the-emulator-wants")
        monkeypatch.setenv("OPENAI_BASE_URL", f"{emulator.url}/v1")
        engine = open_database(Settings.from_env())
        run_id = create_run(engine, settings, make_prompts(2), tmp_path, judge="openai", judge_fallbacks=["offline"],
                            refiner="openai", refiner_fallbacks=["offline"], iterations=2)
        outcome = execute(Settings.from_env(), run_id)
    assert outcome.completed == 2
    with session(engine) as s:
        evaluations = list(s.exec(select(Evaluation)))
        assert {e.judge for e in evaluations} == {"offline"}
        assert all(e.routing["skipped"][0]["service"] == "openai" for e in evaluations[:1])
        assert {el.source for el in s.exec(select(PromptElement))} == {"offline"}
        refused = list(s.exec(select(ProviderCall).where(ProviderCall.provider == "openai")))
        assert refused and all((c.outcome, c.error_kind, c.attempt) == ("error", "auth", 1) for c in refused)
    engine.dispose()


def test_pool_routing_spreads_work_toward_the_faster_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_providers) -> None:  # type: ignore[no-untyped-def]
    w, cf = two_providers
    settings = fast_settings(tmp_path, monkeypatch)
    w.latency_s, cf.latency_s = 0.12, 0.01
    engine = open_database(settings)
    run_id = create_run(engine, settings, make_prompts(40), tmp_path, providers=["worker", "cloudflare"], iterations=1,
                        concurrency=4, routing="pool")
    assert execute(settings, run_id).completed == 40
    assert len(cf.requests) > 2 * len(w.requests) > 0  # both used; most went to the fast one
    # In fallback routing the same run uses only the first provider.
    w.requests.clear()
    cf.requests.clear()
    run_id = create_run(engine, settings, make_prompts(6, title="fallback"), tmp_path, providers=["worker", "cloudflare"],
                        iterations=1, concurrency=4)
    assert execute(settings, run_id).completed == 6
    assert (len(w.requests), len(cf.requests)) == (6, 0)
    engine.dispose()


# ---- budget guard -------------------------------------------------------------------------------------
def test_the_budget_pauses_the_run_before_it_is_exceeded_and_resume_with_more_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast_settings(tmp_path, monkeypatch, extra="[providers.fake]\nprice_per_image = 0.01\n")
    path = write_prompt_set(tmp_path / "set.json", make_prompts(10))
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1", "--concurrency", "3", "--budget", "0.035")
    assert result.code == 130, result.err
    assert "Paused: budget of $0.0350 reached" in result.out
    assert "python -m pipeline resume 1 --budget" in result.out
    settings = Settings.from_env()
    engine = open_database(settings)
    with session(engine) as s:
        run = s.get(Run, 1)
        # Three images were in flight when the fourth would have passed the cap: $0.03 spent, never more.
        assert (run.status, round(run.cost_usd, 4)) == ("paused", 0.03) and run.completed <= 3
    resumed = run_cli("resume", "1", "--budget", "1")
    assert resumed.code == 0, resumed.err + resumed.out
    with session(engine) as s:
        run = s.get(Run, 1)
        assert (run.status, run.completed, round(run.cost_usd, 4), run.config["budget_usd"]) == ("completed", 10, 0.1, 1.0)
    engine.dispose()


# ---- kill -9 during a 100-prompt run against an emulator, then resume --------------------------------------
def _ok_texts(db: Path) -> set[str]:
    return {t for (t,) in database_rows(db.parent, "SELECT prompt_text FROM iteration WHERE status = 'ok'")}


def test_sigkill_during_a_100_prompt_run_then_resume_repeats_no_finished_step(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = data / "darkroom.db"
    path = write_prompt_set(tmp_path / "set.json", make_prompts(100))
    with running(worker.WorkerEmulator()) as w:
        w.latency_s = 0.02
        env = subprocess_env(data, WORKER_URL=f"{w.url}/generate", WORKER_TOKEN=worker.TOKEN, WORKER_METHOD="POST")
        proc = subprocess.Popen([PYTHON, "-m", "pipeline", "run", str(path), "--providers", "worker", "--concurrency", "6"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 90
        while len(_ok_texts(db)) < 60:
            assert time.monotonic() < deadline and proc.poll() is None, "the run should still be going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        finished_at_kill = _ok_texts(db)
        received_at_kill = len(w.requests)
        assert 60 <= len(finished_at_kill) < 200, "the kill should land mid-run"

        resumed = subprocess.run([PYTHON, "-m", "pipeline", "resume", "1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert resumed.returncode == 0, resumed.stderr
        assert "100 completed, 0 failed, 0 blocked of 100" in resumed.stdout
        texts = [r.json()["prompt"] for r in w.requests]

    after = texts[received_at_kill:]
    assert [t for t in after if t in finished_at_kill] == [], "a generation finished before the kill was requested again"
    if not os.environ.get("DARKROOM_DATABASE_URL"):  # on SQLite the file survived the kill intact
        assert database_rows(data, "PRAGMA integrity_check") == [("ok",)]
    [(logged,)] = database_rows(data, "SELECT COUNT(*) FROM provider_call WHERE provider = 'worker'")
    repeated = database_rows(data, "SELECT step_key FROM provider_call WHERE outcome = 'ok' GROUP BY step_key HAVING COUNT(*) > 1")
    images = dict(database_rows(data, "SELECT image_path, sha256 FROM iteration WHERE status = 'ok'"))
    statuses = database_rows(data, "SELECT status, COUNT(*) FROM run_item GROUP BY status")
    assert statuses == [("completed", 100)] and repeated == []
    # The emulator saw every logged call, plus at most the 6 that were in flight when the process died.
    assert 0 <= len(texts) - logged <= 6
    assert max(collections.Counter(texts).values()) <= 2
    # No partial file: every file on disk is a finished image with its recorded hash, and nothing else.
    run_dir = data / "runs" / "1"
    on_disk = {str(p.relative_to(run_dir)) for p in (run_dir / "results").rglob("iteration_*") if not p.name.endswith(".json")}
    assert on_disk == set(images)
    assert all(hashlib.sha256((run_dir / p).read_bytes()).hexdigest() == h for p, h in images.items())
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]


# ---- the pieces on their own ------------------------------------------------------------------------------
def test_breaker_opens_on_a_failure_rate_and_half_opens_for_exactly_one_probe() -> None:
    now = [0.0]
    b = breaker.CircuitBreaker("providers/x", breaker.BreakerSettings(failure_threshold=5, window=10, min_calls=10,
                                                                      failure_rate=0.5, cooldown_s=30), clock=lambda: now[0])
    seen: list[str] = []
    b.listeners.append(lambda t: seen.append(t.state))
    server_error = ProviderError("boom", kind="server", http_status=503)
    for i in range(10):  # alternate: never 5 in a row, but half of the last 10 failed
        b.record_failure(server_error) if i % 2 else b.record_success()
    assert b.state == "open" and not b.allow()
    b.record_failure(ProviderError("no", kind="bad_request", http_status=400))  # the request's fault: no effect
    now[0] = 29.9
    assert not b.allow()
    now[0] = 30.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow() and b.is_open()  # one probe at a time
    b.record_failure(server_error)
    assert b.state == "open" and not b.allow()
    now[0] = 60.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.allow() and b.allow()
    assert seen == ["open", "half_open", "open", "half_open", "closed"]


def test_the_limiter_spaces_calls_by_requests_per_minute_and_serves_later_iterations_first() -> None:
    from pipeline.resilience.limits import LimitSettings, RateLimiter

    async def scenario() -> tuple[list[float], list[str]]:
        limiter = RateLimiter(LimitSettings(max_concurrency=4, requests_per_minute=600))  # one call per 0.1 s
        starts: list[float] = []

        async def call() -> None:
            async with limiter.slot():
                starts.append(time.monotonic())

        await asyncio.gather(*(call() for _ in range(4)))
        one = RateLimiter(LimitSettings(max_concurrency=1))
        order: list[str] = []
        gate = asyncio.Event()

        async def holder() -> None:
            async with one.slot():
                await gate.wait()

        async def waiter(name: str, priority: int) -> None:
            async with one.slot(priority):
                order.append(name)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(waiter(n, p)) for n, p in (("new prompt", -1), ("second iteration", -2), ("another new", -1))]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *waiting)
        return starts, order

    starts, order = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(g >= 0.095 for g in gaps), gaps
    assert order == ["second iteration", "new prompt", "another new"]


def test_a_slot_is_free_once_the_service_has_finished_the_job_while_its_result_is_still_fetched() -> None:
    from pipeline.components import service_done
    from pipeline.resilience.limits import LimitSettings, RateLimiter

    async def scenario() -> tuple[list[str], int]:
        one = RateLimiter(LimitSettings(max_concurrency=1))
        order: list[str] = []

        async def first() -> None:
            async with one.slot():
                order.append("first submitted")
                service_done()  # the service says it is done ...
                service_done()  # (said twice: the slot is given back once)
                await asyncio.sleep(0.05)  # ... and its result and image are being fetched
                order.append("first fetched")

        async def second() -> None:
            await asyncio.sleep(0.01)
            async with one.slot():
                order.append("second submitted")

        await asyncio.gather(first(), second())
        return order, one.in_flight

    order, in_flight = asyncio.run(scenario())
    assert order == ["first submitted", "second submitted", "first fetched"]  # submitted while the first downloads
    assert in_flight == 0


def test_a_429_cuts_concurrency_to_what_the_service_was_serving_and_successes_grow_it_back() -> None:
    from pipeline.resilience.limits import LimitSettings, RateLimiter

    limiter = RateLimiter(LimitSettings(max_concurrency=16, grow_after=3))
    limiter.in_flight = 7  # the service refused the 8th call while serving 7 of ours
    limiter.rate_limited(retry_after=None)
    assert limiter.limit == 7
    limiter.in_flight = 0
    limiter.rate_limited(retry_after=2.0)  # nothing else in flight: down to one, and paused
    assert limiter.limit == 1 and limiter.paused_until > time.monotonic() + 1.9
    for _ in range(6):
        limiter.succeeded()
    assert limiter.limit == 3
