"""Contract tests: every networked provider, judge and refiner against its loopback emulator.

The same faults for every service: success; 400; 401; 429 with Retry-After; 500; timeout;
malformed body; content-policy block; a non-image and an oversized image (checked by the same
Pillow inspection the pipeline applies). Each service answers them in its own wire format.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from pipeline import registry
from pipeline.components import GenerationRequest, ImageProvider, ReferenceImage
from pipeline.config import Settings
from pipeline.errors import BadImage, ContentBlocked, ProviderError
from pipeline.images import inspect_image
from tests.emulators import FAULTS, RETRY_AFTER_S, Emulator, cloudflare, comfyui, gemini, leonardo, ollama, openai, runware, worker
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator

FAST = {"timeout_s": 5.0, "poll_initial_s": 0.01, "poll_max_s": 0.05}  # roomy: a loaded CI's slow answer is no timeout
TIMES_OUT = {"timeout_s": 0.5}  # where a timeout is the point: under the emulators' SLOW_S hold-back
EXPECTED_ERRORS = {  # fault -> (kind, retryable, retry_after)
    "400": ("bad_request", False, None),
    "401": ("auth", False, None),
    "429": ("rate_limited", True, RETRY_AFTER_S),
    "500": ("server", True, None),
    "timeout": ("timeout", True, None),
    "malformed": ("malformed", True, None),
    "blocked": ("blocked", False, None),
}


@dataclass(frozen=True)
class ProviderCase:
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    extra: dict[str, Any]


PROVIDERS = [
    ProviderCase("fal", FalEmulator, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}, {}),
    ProviderCase("cloudflare", cloudflare.CloudflareEmulator, lambda e: {
        "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_BASE_URL": e.url}, {}),
    ProviderCase("cloudflare-sdxl", cloudflare.CloudflareEmulator, lambda e: {
        "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_BASE_URL": e.url,
        "CLOUDFLARE_MODEL": "@cf/stabilityai/stable-diffusion-xl-base-1.0"}, {}),
    ProviderCase("gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}, {}),
    ProviderCase("openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}, {}),
    ProviderCase("leonardo", leonardo.LeonardoEmulator, lambda e: {
        "LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"}, {"usd_per_credit": 0.0005}),
    ProviderCase("runware", runware.RunwareEmulator, lambda e: {"RUNWARE_API_KEY": runware.KEY, "RUNWARE_BASE_URL": f"{e.url}/v1"}, {}),
    ProviderCase("comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}, {}),
    ProviderCase("worker", worker.WorkerEmulator, lambda e: {
        "WORKER_URL": f"{e.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "POST"}, {}),
    ProviderCase("worker-get", worker.WorkerEmulator, lambda e: {
        "WORKER_URL": f"{e.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "GET"}, {}),
]


def times_out(request: pytest.FixtureRequest) -> dict[str, float]:
    """The short timeout for a test of the "timeout" fault, or of every fault in turn (no ``fault`` parameter)."""
    callspec = getattr(request.node, "callspec", None)
    fault = callspec.params.get("fault") if callspec else None
    return TIMES_OUT if fault in ("timeout", None) else {}


@pytest.fixture(params=PROVIDERS, ids=lambda c: c.name)
def provider_case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ProviderCase, Emulator, ImageProvider]]:
    case: ProviderCase = request.param
    emulator = case.emulator().start()
    try:
        for k, v in case.env(emulator).items():
            monkeypatch.setenv(k, v)
        service = case.name.split("-")[0]
        cls = registry.providers.get_class(service)
        provider = cls({**Settings.from_env().component("providers", service), **FAST, **times_out(request), **case.extra})
        yield case, emulator, provider
    finally:
        emulator.stop()


def generate(provider: ImageProvider, prompt: str = "a red fox in the snow") -> Any:
    return asyncio.run(provider.generate(GenerationRequest(prompt=prompt, width=1024, height=768, seed=7, prompt_id="p1")))


@pytest.mark.parametrize("fault", FAULTS)
def test_provider_contract(provider_case, fault: str) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = provider_case
    emulator.fault = fault
    if fault == "ok":
        result = generate(provider)
        info = inspect_image(result.data, claimed_mime=result.mime_type)
        assert (info.width, info.height, info.mime_type) == (64, 48, "image/png")
        assert result.model == provider.model
        return
    if fault in ("not_image", "oversized"):
        result = generate(provider)
        with pytest.raises(BadImage):
            inspect_image(result.data, claimed_mime=result.mime_type)
        return
    with pytest.raises(ProviderError) as caught:
        generate(provider)
    assert_mapped(caught.value, fault, case.name.split("-")[0])


def assert_mapped(error: ProviderError, fault: str, service: str) -> None:
    """The error a fault must become: its kind, retryability, wait and the service's name."""
    kind, retryable, retry_after = EXPECTED_ERRORS[fault]
    assert (error.kind, error.retryable) == (kind, retryable), str(error)
    assert isinstance(error, ContentBlocked) == (fault == "blocked")
    if retry_after is not None:
        assert error.retry_after == retry_after
    assert service in str(error)


def test_provider_never_puts_its_key_in_an_error(provider_case) -> None:  # type: ignore[no-untyped-def]
    case, emulator, provider = provider_case
    for fault in EXPECTED_ERRORS:
        emulator.fault = fault
        with pytest.raises(ProviderError) as caught:
            generate(provider)
        assert not provider._key or provider._key not in str(caught.value)


# ---- service-specific behaviour --------------------------------------------------------------------------------
@pytest.fixture
def fal(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FalEmulator, ImageProvider]]:
    emulator = FalEmulator().start()
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    monkeypatch.setenv("FAL_BASE_URL", emulator.url)
    try:
        yield emulator, registry.providers.get_class("fal")({**Settings.from_env().component("providers", "fal"), **FAST})
    finally:
        emulator.stop()


def test_fal_submits_to_the_model_and_follows_the_status_stream_it_was_given(fal) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = fal
    result = generate(provider)
    submit = emulator.calls("POST")[0]
    assert submit.path == "/fal-ai/flux/schnell"
    body = submit.json()
    assert body["prompt"] == "a red fox in the snow" and body["image_size"] == {"width": 1024, "height": 768} and body["seed"] == 7
    statuses = emulator.calls("GET", "/status")
    assert [r.path.rsplit("/", 2)[1:] for r in statuses] == [["status", "stream"]]  # one stream, no polling
    assert statuses[0].path.startswith("/fal-ai/flux/requests/")  # no subpath
    assert result.metadata["request_id"] in statuses[0].path


def test_fal_polls_the_status_where_no_stream_is_offered(fal) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = fal
    emulator.streams = False
    generate(provider)
    generate(provider)
    statuses = [r.path.rsplit("/", 1)[1] for r in emulator.calls("GET", "/status")]
    assert statuses == ["stream", "status", "status", "status", "status"]  # asked for the stream once, then polled


def test_fal_nsfw_flag_on_a_200_is_a_block(fal) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = fal
    emulator.fault = "blocked_200"
    with pytest.raises(ContentBlocked, match="has_nsfw_concepts"):
        generate(provider)
    assert not emulator.calls("GET", "/files/")  # the flagged image is never downloaded


def test_fal_cancels_a_request_that_outlives_the_timeout(fal) -> None:  # type: ignore[no-untyped-def]
    emulator, _ = fal
    emulator.stuck = True
    with pytest.raises(ProviderError) as caught:
        generate(make("fal", **TIMES_OUT))
    assert caught.value.kind == "timeout" and "cancelled" in str(caught.value)
    assert len(emulator.cancelled) == 1


def test_a_missing_key_is_a_configuration_error_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAL_KEY", raising=False)
    with pytest.raises(registry.ConfigError, match="FAL_KEY"):
        registry.providers.create("fal", Settings.from_env())


def make(name: str, **extra: Any) -> Any:
    return registry.providers.get_class(name)({**Settings.from_env().component("providers", name), **FAST, **extra})


def test_worker_sends_the_prompt_as_query_or_json_and_the_token_as_a_header(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.emulators import running

    with running(worker.WorkerEmulator()) as emulator:
        monkeypatch.setenv("WORKER_URL", f"{emulator.url}/generate")
        monkeypatch.setenv("WORKER_TOKEN", worker.TOKEN)
        for method in ("GET", "POST"):
            monkeypatch.setenv("WORKER_METHOD", method)
            generate(make("worker"))
        get, post = emulator.requests
        assert get.method == "GET" and get.query["prompt"] == ["a red fox in the snow"] and get.query["seed"] == ["7"]
        assert post.method == "POST" and post.json()["prompt"] == "a red fox in the snow" and post.json()["width"] == 1024
        assert worker.TOKEN not in get.path and all(r.headers["authorization"] == f"Bearer {worker.TOKEN}" for r in (get, post))


def test_cloudflare_daily_allocation_used_up_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.emulators import Reply, running

    class Exhausted(cloudflare.CloudflareEmulator):
        def handle(self, req):  # type: ignore[no-untyped-def]
            return self.envelope_error(429, 3036, "You have used up your daily free allocation of 10,000 neurons.")

    with running(Exhausted()) as emulator:
        monkeypatch.setenv("CLOUDFLARE_API_TOKEN", cloudflare.TOKEN)
        monkeypatch.setenv("CLOUDFLARE_ACCOUNT_ID", cloudflare.ACCOUNT)
        monkeypatch.setenv("CLOUDFLARE_BASE_URL", emulator.url)
        with pytest.raises(ProviderError) as caught:
            generate(make("cloudflare"))
    assert (caught.value.kind, caught.value.retryable) == ("rate_limited", False)
    assert "daily free allocation" in str(caught.value) and Reply  # the service's own words reach the user


def test_openai_picks_the_nearest_size_prices_from_usage_and_edits_with_references(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.emulators import png, running

    with running(openai.OpenAIEmulator()) as emulator:
        monkeypatch.setenv("OPENAI_API_KEY", openai.KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", f"{emulator.url}/v1")
        provider = make("openai")
        result = generate(provider)  # 1024x768 asked
        sent = emulator.requests[0].json()
        assert (sent["model"], sent["size"], sent["n"]) == ("gpt-image-1", "1536x1024", 1)
        assert result.cost_usd == pytest.approx(50 * 5.0 / 1e6 + 4160 * 40.0 / 1e6)
        refs = (ReferenceImage(png(), "image/png"), ReferenceImage(png(32, 32), "image/png", "style"))
        asyncio.run(provider.generate(GenerationRequest(prompt="same fox, in winter", width=1024, height=1024, seed=1,
                                                        reference_images=refs)))
        assert emulator.requests[-1].path == "/v1/images/edits" and emulator.edit_images == [2]
        assert b'name="image[]"' in emulator.requests[-1].body


# ---- judges and refiners ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatCase:
    kind: str  # "judges" | "refiners"
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]


CHAT = [
    ChatCase("judges", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    ChatCase("refiners", "gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    ChatCase("judges", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    ChatCase("refiners", "openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    ChatCase("judges", "ollama", ollama.OllamaEmulator, lambda e: {"OLLAMA_HOST": e.url}),
    ChatCase("refiners", "ollama", ollama.OllamaEmulator, lambda e: {"OLLAMA_HOST": e.url}),
]
CHAT_FAULTS = [f for f in FAULTS if f not in ("not_image", "oversized")]


@pytest.fixture(params=CHAT, ids=lambda c: f"{c.kind[:-1]}-{c.name}")
def chat_case(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ChatCase, Emulator, Any]]:
    case: ChatCase = request.param
    emulator = case.emulator().start()
    try:
        for k, v in case.env(emulator).items():
            monkeypatch.setenv(k, v)
        reg = getattr(registry, case.kind)
        component = reg.get_class(case.name)({**Settings.from_env().component(case.kind, case.name), **FAST, **times_out(request)})
        yield case, emulator, component
    finally:
        emulator.stop()


def ask(case: ChatCase, component: Any, elements: tuple = ()) -> Any:  # type: ignore[type-arg]
    from pipeline.components import Check, EvaluationRequest, Issue, Judgement, RefinementRequest
    from tests.emulators import png

    if case.kind == "judges":
        return asyncio.run(component.evaluate(EvaluationRequest(
            original_prompt="A purple cube on a red table", sent_prompt="A purple cube on a red table.", elements=elements,
            image=png(), mime_type="image/png", requested_width=64, requested_height=48)))
    judgement = Judgement(criteria={"artifacts": 6.0}, checks=[Check(2, "Is the cube purple?", "no", "the cube is grey")],
                          issues=[Issue("element", "the cube is grey", "say 'vivid purple cube'", 1.0, 2)])
    return asyncio.run(component.refine(RefinementRequest(
        original_prompt="A purple cube on a red table", current_prompt="A purple cube on a red table.", judgement=judgement,
        failed_checks=tuple(judgement.checks), history=(("A purple cube on a red table.", 6.5),))))


@pytest.mark.parametrize("fault", CHAT_FAULTS)
def test_judge_and_refiner_contract(chat_case, fault: str) -> None:  # type: ignore[no-untyped-def]
    from pipeline.runs import scoring

    case, emulator, component = chat_case
    emulator.fault = fault
    if fault == "ok":
        if case.kind == "judges":
            elements = tuple(asyncio.run(component.decompose("A purple cube on a red table")).elements)
            assert elements[0].category == "entity" and all(e.question.endswith("?") for e in elements)
            judgement = ask(case, component, elements)
            answers = {c.element: c.answer for c in judgement.checks}
            assert set(answers) == {e.number for e in elements} and "no" in answers.values()
            assert judgement.top_issue is not None and judgement.top_issue.suggestion
            assert 0 < scoring.overall(judgement, elements) < 10  # computed in code from the answers
            assert judgement.cost_usd is not None and (judgement.cost_usd > 0 or case.name == "ollama")  # local: free
        else:
            refined = ask(case, component)
            assert refined.prompt.startswith("A purple cube on a red table") and refined.rationale
        return
    with pytest.raises(ProviderError) as caught:
        from pipeline.components import Element

        ask(case, component, (Element(1, "entity", "Is there a cube?"),))
    kind, retryable, retry_after = EXPECTED_ERRORS[fault]
    if fault == "blocked" and case.name == "ollama":
        kind, retryable = "malformed", True  # a local model refuses in words, outside the schema
    assert (caught.value.kind, caught.value.retryable) == (kind, retryable), str(caught.value)
    if retry_after is not None:
        assert caught.value.retry_after == retry_after
    assert not component._key or component._key not in str(caught.value)


def test_judge_sends_the_image_the_schema_and_temperature_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.components import Element
    from tests.emulators import running

    with running(gemini.GeminiEmulator()) as emulator:
        monkeypatch.setenv("GEMINI_API_KEY", gemini.KEY)
        monkeypatch.setenv("GEMINI_BASE_URL", emulator.url)
        judge = registry.judges.create("gemini", Settings.from_env())
        ask(ChatCase("judges", "gemini", gemini.GeminiEmulator, lambda e: {}), judge, (Element(1, "entity", "Is there a cube?"),))
        body = emulator.requests[-1].json()
        config = body["generationConfig"]
        assert config["temperature"] == 0 and config["responseMimeType"] == "application/json"
        assert config["responseJsonSchema"]["title"] == "ImageJudgement"
        parts = body["contents"][0]["parts"]
        inline = parts[0]["inlineData"]  # proto JSON: the service accepts mimeType or mime_type
        assert inline.get("mimeType", inline.get("mime_type")) == "image/png" and "1. Is there a cube?" in parts[1]["text"]
        assert emulator.requests[-1].headers["x-goog-api-key"] == gemini.KEY


def test_comfyui_fills_the_workflow_with_typed_values_and_names_a_missing_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.emulators import running

    with running(comfyui.ComfyUIEmulator()) as emulator:
        monkeypatch.setenv("COMFYUI_URL", emulator.url)
        generate(make("comfyui"))
        graph = next(iter(emulator.graphs.values()))
        assert graph["6"]["inputs"]["text"] == "a red fox in the snow" and graph["3"]["inputs"]["seed"] == 7
        assert (graph["5"]["inputs"]["width"], graph["5"]["inputs"]["height"]) == (1024, 768)
        monkeypatch.setenv("COMFYUI_CHECKPOINT", "sdxl_missing.safetensors")
        with pytest.raises(ProviderError) as caught:
            generate(make("comfyui"))
        assert caught.value.kind == "bad_request" and "sdxl_missing.safetensors" in str(caught.value) and "node 4" in str(caught.value)
        custom = tmp_path / "mine.json"
        custom.write_text('{"1": {"class_type": "MyTextToImage", "inputs": {"text": "{{prompt}}", "seed": "{{seed}}"}}}')
        monkeypatch.setenv("COMFYUI_WORKFLOW", str(custom))
        monkeypatch.delenv("COMFYUI_CHECKPOINT")
        generate(make("comfyui"))
        assert list(emulator.graphs.values())[-1] == {"1": {"class_type": "MyTextToImage", "inputs": {"text": "a red fox in the snow", "seed": 7}}}
        emulator.stuck = True
        with pytest.raises(ProviderError, match="interrupted"):
            generate(make("comfyui", **TIMES_OUT))
        assert emulator.interrupted
        custom.write_text('{"1": {"class_type": "NoPromptHere", "inputs": {}}}')
        with pytest.raises(registry.ConfigError, match="placeholder"):
            make("comfyui")


def test_leonardo_and_runware_report_their_own_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.emulators import running

    with running(leonardo.LeonardoEmulator()) as leo, running(runware.RunwareEmulator()) as rw:
        monkeypatch.setenv("LEONARDO_API_KEY", leonardo.KEY)
        monkeypatch.setenv("LEONARDO_BASE_URL", f"{leo.url}/api/rest/v1")
        monkeypatch.setenv("RUNWARE_API_KEY", runware.KEY)
        monkeypatch.setenv("RUNWARE_BASE_URL", f"{rw.url}/v1")
        assert generate(make("leonardo", usd_per_credit=0.0005)).cost_usd == pytest.approx(24 * 0.0005)
        sent = leo.calls("POST")[0].json()
        assert sent["modelId"] == "1dd50843-d653-4516-a8e3-f0238ee453ff" and sent["num_images"] == 1 and sent["width"] == 1024
        assert generate(make("leonardo")).cost_usd is None  # no credit price configured: the table applies
        assert generate(make("runware")).cost_usd == pytest.approx(0.0013)
        [task] = rw.calls("POST")[0].json()
        assert (task["taskType"], task["includeCost"], task["positivePrompt"]) == ("imageInference", True, "a red fox in the snow")


# ---- Test connection (Settings page) ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", PROVIDERS, ids=lambda c: c.name)
def test_test_connection_reports_a_working_service_and_a_refused_key(case: ProviderCase, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.services.catalog import test_connection
    from tests.emulators import running

    service = case.name.split("-")[0]
    with running(case.emulator()) as emulator:
        env = case.env(emulator)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        probe = test_connection("providers", service, Settings.from_env())
        assert probe.ok, probe.message
        key_var = registry.providers.get_class(service).key_env_var or ("WORKER_TOKEN" if service == "worker" else None)
        if key_var:
            monkeypatch.setenv(key_var, "wrong-key")
            probe = test_connection("providers", service, Settings.from_env())
            assert not probe.ok and "refused the key" in probe.message and "wrong-key" not in probe.message
    probe = test_connection("providers", service, Settings.from_env())  # the emulator is gone
    assert not probe.ok and "could not be reached" in probe.message


@pytest.mark.parametrize("case", CHAT, ids=lambda c: f"{c.kind[:-1]}-{c.name}")
def test_test_connection_for_judges_and_refiners(case: ChatCase, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.services.catalog import test_connection
    from tests.emulators import running

    with running(case.emulator()) as emulator:
        for k, v in case.env(emulator).items():
            monkeypatch.setenv(k, v)
        probe = test_connection(case.kind, case.name, Settings.from_env())
        assert probe.ok, probe.message
    assert test_connection("judges", "offline", Settings.from_env()).ok
