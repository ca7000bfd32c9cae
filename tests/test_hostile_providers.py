"""Hostile services, against the loopback emulators' hostile modes (issue 11, items 1, 2, 5, 6, 17 and 20).

Every provider and judge, each misbehaving the way a hostile or broken service can:

- trickling its answer a byte at a time (each read is quick, the whole never ends): the call is
  cut off at ``timeout_s`` plus the deadline's grace, and the prompt ends failed with a timeout;
- sending a body far over its cap (an image, JSON, a gzip bomb): an error naming the cap;
- sending a JPEG cut short: a bad image, logged and retried, then the fallback, no row left running;
- quoting the key back in its error: the key is in no database row, file, log line or stderr;
- naming a result URL on another host: the key is not sent there (or the fetch is refused);
- a Test connection to an Ollama (ComfyUI, Cloudflare) that lacks the configured model says so.
"""

from __future__ import annotations

import asyncio
import gzip
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select

from pipeline import registry
from pipeline.components import GenerationRequest
from pipeline.config import Settings
from pipeline.errors import BadImage, ProviderError
from pipeline.images import inspect_image
from pipeline.resilience.routing import Attempt, ServiceChain, member_for
from pipeline.services import wire
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration, ProviderCall, RunItem
from tests.conftest import make_prompts, run_cli, write_prompt_set
from tests.emulators import Emulator, Reply, Request, cloudflare, comfyui, gemini, leonardo, ollama, openai, running, runware, worker
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator
from tests.emulators.imagehost import ImageHostEmulator

TIMEOUT_S, GRACE_S = 1.0, 0.5
IMAGE_CAP, JSON_CAP = 200_000, 50_000
CONFIG = """
[resilience.retry]
max_attempts = {attempts}
initial_delay_s = 0.01
max_delay_s = 0.02
[resilience.deadline]
grace_s = {grace_s}
[network]
max_image_bytes = {image_cap}
max_json_bytes = {json_cap}
"""


@dataclass(frozen=True)
class Case:
    kind: str  # providers | judges
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    image_url: bool = False  # the result image is downloaded from a URL the service names

    @property
    def id(self) -> str:
        return f"{self.kind[:-1]}-{self.name}"


CASES = [
    Case("providers", "fal", FalEmulator, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}, image_url=True),
    Case("providers", "cloudflare", cloudflare.CloudflareEmulator, lambda e: {
        "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_BASE_URL": e.url}),
    Case("providers", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    Case("providers", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    Case("providers", "leonardo", leonardo.LeonardoEmulator, lambda e: {
        "LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"}, image_url=True),
    Case("providers", "runware", runware.RunwareEmulator, lambda e: {"RUNWARE_API_KEY": runware.KEY, "RUNWARE_BASE_URL": f"{e.url}/v1"},
         image_url=True),
    Case("providers", "comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}),
    Case("providers", "worker", worker.WorkerEmulator, lambda e: {
        "WORKER_URL": f"{e.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "POST"}),
    Case("judges", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    Case("judges", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    Case("judges", "ollama", ollama.OllamaEmulator, lambda e: {"OLLAMA_HOST": e.url, "OLLAMA_API_KEY": "ollama-test-key-0000"}),
]
PROVIDERS = [c for c in CASES if c.kind == "providers"]
KEYED = [c for c in PROVIDERS if c.name != "comfyui"]


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, timeout_s: float = TIMEOUT_S, attempts: int = 2,
              own: dict[str, str] | None = None) -> Settings:
    """Small timeouts and caps for every service, fast polling and retries; ``own``: more keys for a service's table."""
    tables = "".join(f"[{c.kind}.{c.name}]\ntimeout_s = {timeout_s}\npoll_initial_s = 0.01\npoll_max_s = 0.05\n"
                     + (own or {}).get(c.name, "") for c in CASES if c.kind != "refiners")
    path = tmp_path / "hostile.toml"
    path.write_text(CONFIG.format(attempts=attempts, grace_s=GRACE_S, image_cap=IMAGE_CAP, json_cap=JSON_CAP) + tables)
    monkeypatch.setenv("DARKROOM_CONFIG", str(path))
    return Settings.from_env()


@pytest.fixture
def service(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Case, Emulator]]:
    case: Case = request.param
    with running(case.emulator()) as emulator:
        for k, v in case.env(emulator).items():
            monkeypatch.setenv(k, v)
        emulator.trickle_s = 0.2
        emulator.huge_bytes = 3_000_000
        yield case, emulator


async def one_call(component: Any) -> Any:
    """What the runner asks of this kind of service, once (a judge's first call lists the prompt's elements)."""
    if component.kind == "providers":
        return await component.generate(GenerationRequest(prompt="a red fox in the snow", width=1024, height=768, seed=7, prompt_id="p1"))
    return await component.decompose("a red fox in the snow")


def call_through_chain(case: Case, settings: Settings, attempts: list[Attempt]) -> Any:
    """One call the way the runner makes it: retries, breaker and the deadline of each attempt."""
    component = getattr(registry, case.kind).create(case.name, settings)
    chain = ServiceChain(case.kind, [member_for(settings, component)])
    return asyncio.run(chain.call(one_call, attempts.append))


def call_directly(case: Case, settings: Settings) -> Any:
    """One call straight to the component (no chain): the error is the service's own."""
    return asyncio.run(one_call(getattr(registry, case.kind).create(case.name, settings)))


# ---- 1. a trickling answer is cut off at the deadline ------------------------------------------------
@pytest.mark.parametrize("service", CASES, ids=lambda c: c.id, indirect=True)
def test_a_trickling_service_is_cut_off_at_timeout_plus_grace(service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    case, emulator = service
    settings = configure(tmp_path, monkeypatch, attempts=1)
    emulator.fault = "trickle"
    attempts: list[Attempt] = []
    t0 = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        call_through_chain(case, settings, attempts)
    elapsed = time.monotonic() - t0
    deadline = TIMEOUT_S + GRACE_S
    assert caught.value.kind == "timeout", str(caught.value)
    assert [(a.outcome, a.error.kind if a.error else "") for a in attempts] == [("error", "timeout")]
    assert f"did not finish within {deadline:g} s (timeout_s = {TIMEOUT_S:g} plus {GRACE_S:g} s grace)" in str(attempts[0].error)
    assert elapsed < deadline + 1.0, f"{elapsed:.1f} s for one attempt of at most {deadline:g} s"


def test_a_trickling_worker_ends_its_prompts_failed_with_a_timeout_and_none_left_running(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(worker.WorkerEmulator()) as w:
        monkeypatch.setenv("WORKER_URL", f"{w.url}/generate")
        monkeypatch.setenv("WORKER_TOKEN", worker.TOKEN)
        settings = configure(tmp_path, monkeypatch)
        w.fault, w.trickle_s = "trickle", 0.2
        path = write_prompt_set(tmp_path / "set.json", make_prompts(2))
        t0 = time.monotonic()
        result = run_cli("run", path, "--providers", "worker", "--iterations", "1", "--concurrency", "2")
        elapsed = time.monotonic() - t0
    assert result.code == 1, result.out + result.err
    assert elapsed < 2 * (TIMEOUT_S + GRACE_S) + 4, f"the run took {elapsed:.1f} s"  # 2 attempts per prompt, side by side
    engine = open_database(settings)
    with session(engine) as s:
        items = list(s.exec(select(RunItem)))
        assert [(i.status, i.error_kind) for i in items] == [("failed", "timeout")] * 2
        assert all(it.status == "failed" for it in s.exec(select(Iteration)))
        calls = list(s.exec(select(ProviderCall).where(ProviderCall.provider == "worker")))
        assert len(calls) == 4 and {c.error_kind for c in calls} == {"timeout"}
    engine.dispose()


def test_cancelling_a_call_in_flight_ends_it_at_once_and_reports_it_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    case = next(c for c in CASES if c.name == "worker")
    with running(worker.WorkerEmulator()) as w:
        for k, v in case.env(w).items():
            monkeypatch.setenv(k, v)
        settings = configure(tmp_path, monkeypatch, timeout_s=30)
        w.fault = "trickle"
        attempts: list[Attempt] = []

        async def main() -> float:
            component = registry.providers.create("worker", settings)
            chain = ServiceChain("providers", [member_for(settings, component)])
            task = asyncio.create_task(chain.call(one_call, attempts.append))
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return time.monotonic() - t0

        assert asyncio.run(main()) < 0.5
    assert [(a.outcome, a.error.kind if a.error else "") for a in attempts] == [("cancelled", "cancelled")]


# ---- 2. every body is capped ---------------------------------------------------------------------------
@pytest.mark.parametrize("service", PROVIDERS, ids=lambda c: c.id, indirect=True)
def test_an_image_over_the_cap_fails_naming_the_cap(service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    case, emulator = service
    settings = configure(tmp_path, monkeypatch)
    emulator.fault = "huge"
    with pytest.raises(ProviderError) as caught:
        call_directly(case, settings)
    assert (caught.value.kind, caught.value.retryable) == ("too_large", False), str(caught.value)
    assert "[network] max_image_bytes" in str(caught.value) and "cap for" in str(caught.value)


@pytest.mark.parametrize("service", [c for c in CASES if c.name != "worker"], ids=lambda c: c.id, indirect=True)
def test_json_over_the_cap_fails_naming_the_cap(service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    case, emulator = service
    settings = configure(tmp_path, monkeypatch)
    emulator.fault = "huge_json"
    with pytest.raises(ProviderError) as caught:
        call_directly(case, settings)
    assert caught.value.kind == "too_large", str(caught.value)
    # Services whose JSON may carry the image in base64 allow that much more, and say so.
    assert "[network] max_json_bytes" in str(caught.value) or "image sent as base64 JSON" in str(caught.value)


def test_a_declared_length_over_the_cap_is_refused_before_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(worker.WorkerEmulator()) as w:
        monkeypatch.setenv("WORKER_URL", f"{w.url}/generate")
        monkeypatch.setenv("WORKER_TOKEN", worker.TOKEN)
        settings = configure(tmp_path, monkeypatch)
        w.fault, w.declare_length, w.huge_bytes = "huge", True, 2_000_000_000
        t0 = time.monotonic()
        with pytest.raises(ProviderError, match=r"says it is 2,000 MB, over the 200 kB cap for an image") as caught:
            call_directly(PROVIDERS[-1], settings)
        assert caught.value.kind == "too_large" and time.monotonic() - t0 < 2


class GzipBomb(Emulator):
    """A gzip body: ``/bomb`` is 40 kB that inflates to 40 MB of zeros, anything else a small JSON object."""

    def handle(self, req: Request) -> Reply:
        raw = b"0" * 40_000_000 if req.path == "/bomb" else b'{"status": "COMPLETED"}'
        return Reply(200, gzip.compress(raw, compresslevel=9), {"Content-Type": "application/json", "Content-Encoding": "gzip"})


def test_a_compressed_body_counts_against_the_cap_decompressed() -> None:
    guard = wire.Guard("bomb", wire.NetworkSettings(max_json_bytes=JSON_CAP).json)

    async def fetch(url: str) -> Any:
        async with wire.client(guard=guard) as http:
            return wire.json_of("bomb", await wire.send(http, "bomb", "GET", url))

    with running(GzipBomb()) as bomb:
        assert asyncio.run(fetch(f"{bomb.url}/status")) == {"status": "COMPLETED"}  # compressed answers still read
        with pytest.raises(ProviderError, match="over the 50 kB cap for a JSON answer") as caught:
            asyncio.run(fetch(f"{bomb.url}/bomb"))
    assert caught.value.kind == "too_large"


# ---- 4. a truncated JPEG is a bad answer like any other -------------------------------------------------
@pytest.mark.parametrize("service", PROVIDERS, ids=lambda c: c.id, indirect=True)
def test_a_truncated_jpeg_from_any_provider_is_a_retryable_bad_image(service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    case, emulator = service
    settings = configure(tmp_path, monkeypatch)
    emulator.fault = "truncated_jpeg"
    result = call_directly(case, settings)
    with pytest.raises(BadImage, match="cannot be decoded .*cut short or corrupt") as caught:
        inspect_image(result.data, claimed_mime=result.mime_type)
    assert caught.value.retryable


def test_a_truncated_jpeg_is_retried_logged_and_ends_failed_with_no_row_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(worker.WorkerEmulator()) as w:
        monkeypatch.setenv("WORKER_URL", f"{w.url}/generate")
        monkeypatch.setenv("WORKER_TOKEN", worker.TOKEN)
        settings = configure(tmp_path, monkeypatch)
        w.fault = "truncated_jpeg"
        path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
        result = run_cli("run", path, "--providers", "worker", "--iterations", "1")
        assert len(w.requests) == 2  # max_attempts
    assert result.code == 1
    assert "internal" not in result.out + result.err and "OSError" not in result.out
    engine = open_database(settings)
    with session(engine) as s:
        item = s.exec(select(RunItem)).one()
        it = s.exec(select(Iteration)).one()
        assert (item.status, item.error_kind) == ("failed", "bad_image")
        assert (it.status, it.error_kind, it.image_path) == ("failed", "bad_image", "")
        calls = list(s.exec(select(ProviderCall).where(ProviderCall.operation == "generate")))
        assert [(c.outcome, c.error_kind) for c in calls] == [("retried", "bad_image"), ("error", "bad_image")]
        assert "cannot be decoded" in calls[0].error_message
    engine.dispose()
    assert not list((settings.runs_dir / "1" / "results" / "p000").glob("iteration_1.*"))


def test_a_truncated_jpeg_sends_the_prompt_to_the_fallback_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(worker.WorkerEmulator()) as w, running(cloudflare.CloudflareEmulator()) as cf:
        for case, emulator in ((PROVIDERS[-1], w), (PROVIDERS[1], cf)):
            for k, v in case.env(emulator).items():
                monkeypatch.setenv(k, v)
        settings = configure(tmp_path, monkeypatch)
        w.fault = "truncated_jpeg"
        path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
        result = run_cli("run", path, "--providers", "worker,cloudflare", "--iterations", "1")
    assert result.code == 0, result.out + result.err
    engine = open_database(settings)
    with session(engine) as s:
        it = s.exec(select(Iteration)).one()
        assert (it.status, it.provider) == ("ok", "cloudflare")
        assert it.routing["skipped"] == [{"service": "worker", "reason": "2 attempts failed; last: bad_image"}]
        logged = [(c.provider, c.outcome) for c in s.exec(select(ProviderCall).where(ProviderCall.operation == "generate"))]
        assert logged == [("worker", "retried"), ("worker", "error"), ("cloudflare", "ok")]
    engine.dispose()


# ---- 5. a key quoted back is never stored or printed ----------------------------------------------------
def everything_written(settings: Settings) -> str:
    """The database as SQL text, and every file under the data folder (sidecars, summaries, logs)."""
    db = settings.data_dir / "darkroom.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            text = "\n".join(conn.iterdump())
    else:  # PostgreSQL (DARKROOM_DATABASE_URL): every row of every table
        engine = open_database(settings)
        with engine.connect() as conn:
            text = "\n".join(str(tuple(row)) for table in sa.inspect(conn).get_table_names()
                              for row in conn.execute(sa.text(f'SELECT * FROM "{table}"')))
        engine.dispose()
    for path in settings.data_dir.rglob("*"):
        if path.is_file() and path != db and not path.name.startswith("darkroom.db"):
            text += path.read_bytes().decode("utf-8", "replace")
    return text


@pytest.mark.parametrize("role", ["providers", "judge"])
def test_a_key_quoted_back_in_an_error_is_never_stored_logged_or_printed(role: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         capfd: pytest.CaptureFixture[str]) -> None:
    cases = KEYED if role == "providers" else [c for c in CASES if c.kind == "judges" and c.name == "openai"]
    emulators = [c.emulator().start() for c in cases]
    try:
        keys = []
        for case, emulator in zip(cases, emulators, strict=True):
            env = case.env(emulator)
            keys += [v for k, v in env.items() if k.endswith(("KEY", "TOKEN"))]
            for k, v in env.items():
                monkeypatch.setenv(k, v)
            emulator.fault = "echo_key"
        settings = configure(tmp_path, monkeypatch)
        path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
        chain = ["--providers", ",".join(c.name for c in cases)] if role == "providers" else ["--judge", "openai"]
        result = run_cli("run", path, *chain, "--iterations", "1")
    finally:
        for emulator in emulators:
            emulator.stop()
    assert result.code == 1
    printed = capfd.readouterr()
    stored = everything_written(settings)
    assert "redacted]" in stored  # the services' error texts are kept, minus the keys
    for key in keys:
        for where, text in (("stdout", result.out + printed.out), ("stderr", result.err + printed.err), ("data folder", stored)):
            assert key not in text, f"{key} found in {where}"


def test_errors_and_log_lines_redact_secrets_from_the_environment_and_secrets_toml(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from pipeline.logs import LogFiles, setup_logging

    monkeypatch.setenv("SOME_SERVICE_API_KEY", "canary-value-abcdefgh12345678")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text('OTHER_TOKEN = "tok:with/odd=chars"\n[db]\npassword = "hunter2hunter2"\n')
    error = ProviderError("echo canary-value-abcdefgh12345678 and tok%3Awith%2Fodd%3Dchars and hunter2hunter2")
    assert str(error) == "echo [SOME_SERVICE_API_KEY redacted] and [OTHER_TOKEN redacted] and [password redacted]"
    log_path = setup_logging(LogFiles(tmp_path / "logs", max_bytes=1_000_000, backup_count=1, keep_files=2))
    logging.getLogger("pipeline.test").warning("service said %s", "canary-value-abcdefgh12345678")
    try:
        raise RuntimeError("boom hunter2hunter2")
    except RuntimeError:
        logging.getLogger("pipeline.test").exception("failed")
    for handler in logging.getLogger("pipeline").handlers:
        handler.flush()
    text = log_path.read_text() if log_path else ""
    setup_logging(None)  # the file handler goes; later tests set up their own
    assert "sk-live" not in text and "hunter2" not in text and "[SOME_SERVICE_API_KEY redacted]" in text


# ---- 3. keys go to the service's own host only ------------------------------------------------------------
@pytest.fixture
def foreign_host() -> Iterator[ImageHostEmulator]:
    host = ImageHostEmulator().start("127.0.0.2")  # loopback, but another origin
    try:
        yield host
    finally:
        host.stop()


@pytest.mark.parametrize("service", [c for c in PROVIDERS if c.image_url], ids=lambda c: c.id, indirect=True)
def test_a_result_url_on_another_host_is_fetched_without_the_key(service, foreign_host: ImageHostEmulator, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    case, emulator = service
    settings = configure(tmp_path, monkeypatch)
    emulator.fault, emulator.foreign_host = "foreign_url", foreign_host.url
    result = call_directly(case, settings)
    assert inspect_image(result.data).format == "PNG"
    assert len(foreign_host.requests) == 1 and foreign_host.credentials_seen() == []
    assert all(r.headers.get("authorization") for r in emulator.requests if not r.path.startswith(("/cdn/", "/im/")))  # its own host had it


@pytest.mark.parametrize("service", [c for c in PROVIDERS if c.image_url], ids=lambda c: c.id, indirect=True)
def test_a_result_url_on_another_host_is_refused_when_configured(service, foreign_host: ImageHostEmulator, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    case, emulator = service
    settings = configure(tmp_path, monkeypatch, own={case.name: 'foreign_downloads = "refuse"\n'})
    emulator.fault, emulator.foreign_host = "foreign_url", foreign_host.url
    with pytest.raises(ProviderError, match=r"refused to send a request to http://127\.0\.0\.2:\d+/.*foreign_downloads") as caught:
        call_directly(case, settings)
    assert (caught.value.kind, caught.value.retryable) == ("refused", False)
    assert foreign_host.requests == []


def test_fal_status_urls_on_another_host_never_get_the_key(foreign_host: ImageHostEmulator, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with running(FalEmulator()) as fal:
        monkeypatch.setenv("FAL_KEY", FAL_KEY)
        monkeypatch.setenv("FAL_BASE_URL", fal.url)
        settings = configure(tmp_path, monkeypatch)
        fal.fault, fal.foreign_host = "foreign_status", foreign_host.url
        with pytest.raises(ProviderError):
            call_directly(PROVIDERS[0], settings)
    assert foreign_host.requests and foreign_host.credentials_seen() == []


# ---- 6. Test connection names a missing model -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["judges", "refiners"])
def test_ollama_test_connection_says_the_configured_model_is_not_pulled(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with running(ollama.OllamaEmulator()) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        component = getattr(registry, kind).create("ollama", Settings.from_env())
        assert asyncio.run(component.probe()).ok  # qwen2.5vl is there
        server.models = ("llava:13b", "qwen2.5vl:7b")
        probe = asyncio.run(component.probe())
    assert not probe.ok
    assert "the model 'qwen2.5vl' is not pulled" in probe.message and "llava:13b" in probe.message
    assert "ollama pull qwen2.5vl" in probe.message and "key accepted" not in probe.message


def test_comfyui_and_cloudflare_test_connection_name_a_missing_model(monkeypatch: pytest.MonkeyPatch) -> None:
    with running(comfyui.ComfyUIEmulator()) as server:
        monkeypatch.setenv("COMFYUI_URL", server.url)
        monkeypatch.setenv("COMFYUI_CHECKPOINT", "sd_xl_base_1.0.safetensors")
        probe = asyncio.run(registry.providers.create("comfyui", Settings.from_env()).probe())
    assert not probe.ok and "checkpoint 'sd_xl_base_1.0.safetensors' is not on this server" in probe.message
    with running(cloudflare.CloudflareEmulator()) as server:
        for k, v in PROVIDERS[1].env(server).items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("CLOUDFLARE_MODEL", "@cf/black-forest-labs/flux-9-imaginary")
        probe = asyncio.run(registry.providers.create("cloudflare", Settings.from_env()).probe())
    assert not probe.ok and "no model '@cf/black-forest-labs/flux-9-imaginary'" in probe.message


def test_a_trickling_test_connection_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.services import remote

    monkeypatch.setattr(remote, "PROBE_TIMEOUT_S", 1.0)
    with running(ollama.OllamaEmulator()) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        server.fault, server.trickle_s = "trickle", 0.2
        t0 = time.monotonic()
        probe = asyncio.run(registry.judges.create("ollama", Settings.from_env()).probe())
    assert not probe.ok and "did not answer completely within 1 s" in probe.message
    assert time.monotonic() - t0 < 3
