"""Providers that take images: every vendor's image-taking path against its loopback emulator.

Per provider: a request with reference images succeeds and the emulator saw them in the wire
format the service documents (multipart parts, inline parts, data URIs, a presigned upload, an
uploaded input file, a byte array); the capability table's limits are what the provider takes
(the most references, mask and ``n`` it declares go through, and ``n`` images come back, each
its own :class:`GeneratedImage`); every error class still maps the same way when a request
carries references; and references the table says the service cannot take (too many, a format
it does not read, too large, a mask it has no use for, more images than ``max_n``) are refused
with a message naming the file before anything is sent.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image

from pipeline import registry
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, ReferenceImage
from pipeline.config import Settings
from pipeline.errors import ProviderError
from pipeline.services import references
from tests.emulators import Emulator, cloudflare, comfyui, gemini, leonardo, openai, runware, worker
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator
from tests.test_contracts import EXPECTED_ERRORS, FAST, TIMES_OUT, assert_mapped

PROMPT = "the same fox, now in winter"


def encoded(size: tuple[int, int], fmt: str, colour: tuple[int, ...] = (30, 120, 200), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt)
    return buf.getvalue()


SUBJECT = ReferenceImage(encoded((64, 48), "PNG"), "image/png", "subject", "characters/fox.png")
STYLE = ReferenceImage(encoded((40, 40), "JPEG", (200, 180, 20)), "image/jpeg", "style", "styles/winter.jpg")
MASK = ReferenceImage(encoded((64, 48), "PNG", (0, 0, 0, 0), "RGBA"), "image/png", "mask", "masks/sky.png")


@dataclass(frozen=True)
class Case:
    name: str  # the registry name
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]


CASES = [
    Case("openai", openai.OpenAIEmulator, lambda e: {"OPENAI_API_KEY": openai.KEY, "OPENAI_BASE_URL": f"{e.url}/v1"}),
    Case("gemini", gemini.GeminiEmulator, lambda e: {"GEMINI_API_KEY": gemini.KEY, "GEMINI_BASE_URL": e.url}),
    Case("fal", FalEmulator, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}),
    Case("leonardo", leonardo.LeonardoEmulator, lambda e: {"LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"}),
    Case("runware", runware.RunwareEmulator, lambda e: {"RUNWARE_API_KEY": runware.KEY, "RUNWARE_BASE_URL": f"{e.url}/v1"}),
    Case("comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}),
    Case("cloudflare", cloudflare.CloudflareEmulator, lambda e: {
        "CLOUDFLARE_API_TOKEN": cloudflare.TOKEN, "CLOUDFLARE_ACCOUNT_ID": cloudflare.ACCOUNT, "CLOUDFLARE_BASE_URL": e.url}),
    Case("worker", worker.WorkerEmulator, lambda e: {"WORKER_URL": f"{e.url}/generate", "WORKER_TOKEN": worker.TOKEN, "WORKER_METHOD": "POST"}),
]
BY_NAME = {c.name: c for c in CASES}


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Emulator, ImageProvider]]]:
    """``service(name, capabilities={...}, **settings)``: a running emulator and the provider pointed at it."""
    started: list[Emulator] = []

    def make(name: str, capabilities: dict[str, Any] | None = None, **settings: Any) -> tuple[Emulator, ImageProvider]:
        case = BY_NAME[name]
        emulator = case.emulator().start()
        started.append(emulator)
        for k, v in case.env(emulator).items():
            monkeypatch.setenv(k, v)
        table = {**Settings.from_env().component("providers", name), **FAST, **settings}
        if capabilities:
            table["capabilities"] = {**table["capabilities"], **capabilities}
        return emulator, registry.providers.get_class(name)(table)

    try:
        yield make
    finally:
        for emulator in started:
            emulator.stop()


def generate(provider: ImageProvider, refs: tuple[ReferenceImage, ...], n: int = 1) -> GeneratedImage:
    return asyncio.run(provider.generate(GenerationRequest(prompt=PROMPT, width=1024, height=768, seed=7, prompt_id="p1",
                                                           reference_images=refs, n=n)))


def caps_of(provider: ImageProvider, request_refs: tuple[ReferenceImage, ...] = (SUBJECT,)) -> Any:
    model = references.model_for(provider.name, provider.settings, provider.model,
                                 GenerationRequest(prompt="x", width=64, height=64, seed=1, reference_images=request_refs))
    return references.capabilities(provider.name, provider.settings, model)


def data_uri_bytes(uri: str, mime: str) -> bytes:
    head, _, data = uri.partition(",")
    assert head == f"data:{mime};base64"
    return base64.b64decode(data)


# ---- success: what each service saw ---------------------------------------------------------------------------
def test_openai_sends_the_references_as_image_parts_and_the_mask_as_its_own_part(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("openai")
    result = generate(provider, (SUBJECT, STYLE, MASK), n=2)
    (edit,) = emulator.calls("POST", "/images/edits")
    parts = emulator.edits[-1]
    images = [p for p in parts if p.name == "image[]"]
    assert [(p.filename, p.content_type, p.data) for p in images] == [
        ("fox.png", "image/png", SUBJECT.data), ("winter.jpg", "image/jpeg", STYLE.data)]
    (mask,) = [p for p in parts if p.name == "mask"]
    assert (mask.content_type, mask.data) == ("image/png", MASK.data)
    fields = {p.name: p.text for p in parts if p.filename is None}
    assert (fields["prompt"], fields["n"], fields["model"]) == (PROMPT, "2", "gpt-image-1")
    assert len(result.images()) == 2 and all(i.data[:8] == b"\x89PNG\r\n\x1a\n" for i in result.images())
    whole_call = 50 * 5.0 / 1e6 + 4160 * 40.0 / 1e6  # the usage covers both images: each carries half
    assert [i.cost_usd for i in result.images()] == pytest.approx([whole_call / 2] * 2)
    assert edit.headers["authorization"] == f"Bearer {openai.KEY}"


def test_gemini_sends_image_parts_before_the_prompt_each_named_by_its_role(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("gemini")
    result = generate(provider, (SUBJECT, STYLE))
    assert emulator.received_images[-1] == [("image/png", SUBJECT.data), ("image/jpeg", STYLE.data)]
    (call,) = emulator.calls("POST", ":generateContent")
    parts = [p for c in call.json()["contents"] for p in c["parts"]]
    texts = [p.get("text") for p in parts]
    assert texts[0] == "Reference image 1 (subject):" and texts[2] == "Reference image 2 (style):" and texts[-1] == PROMPT
    assert "inlineData" in parts[1] and "inlineData" in parts[3]
    assert result.data and result.extra == []


def test_size_auto_lets_openai_and_gemini_choose(service) -> None:  # type: ignore[no-untyped-def]
    """``size: "auto"`` reaches the services that offer it: OpenAI's size "auto", Gemini with no aspect ratio."""
    auto = GenerationRequest(prompt=PROMPT, width=1024, height=1024, seed=7, prompt_id="p1", auto_size=True)
    openai_emulator, openai_provider = service("openai")
    asyncio.run(openai_provider.generate(auto))
    assert openai_emulator.requests[-1].json()["size"] == "auto"
    gemini_emulator, gemini_provider = service("gemini")
    result = asyncio.run(gemini_provider.generate(auto))
    (call,) = gemini_emulator.calls("POST", ":generateContent")
    assert "aspectRatio" not in call.json()["generationConfig"]["imageConfig"] and result.metadata["aspect_ratio"] == "auto"
    fixed = dataclasses.replace(auto, auto_size=False, width=1536)
    asyncio.run(gemini_provider.generate(fixed))
    assert gemini_emulator.calls("POST", ":generateContent")[-1].json()["generationConfig"]["imageConfig"]["aspectRatio"] == "3:2"


def test_fal_sends_a_prompt_with_references_to_the_edit_model_as_a_data_uri(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("fal")
    result = generate(provider, (SUBJECT,), n=3)
    (submit,) = emulator.calls("POST")
    body = submit.json()
    assert submit.path == "/fal-ai/flux-pro/kontext" and body["num_images"] == 3
    assert data_uri_bytes(body["image_url"], "image/png") == SUBJECT.data
    assert emulator.received_images == [("image/png", SUBJECT.data)]
    assert [i.model for i in result.images()] == ["fal-ai/flux-pro/kontext"] * 3  # priced by the edit model's own price
    assert len({i.source_url for i in result.images()}) == 3
    generate(provider, ())  # without references: the configured text-to-image model, as before
    assert emulator.calls("POST")[-1].path == "/fal-ai/flux/schnell" and "image_url" not in emulator.calls("POST")[-1].json()


def test_leonardo_uploads_the_init_image_through_the_presigned_post_then_names_it(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("leonardo", usd_per_credit=0.0005)
    result = generate(provider, (ReferenceImage(STYLE.data, "image/jpeg", "composition", "layouts/wide.jpg"),), n=2)
    posts = emulator.calls("POST")
    assert [r.path for r in posts] == ["/api/rest/v1/init-image", "/s3/init-images", "/api/rest/v1/generations"]
    assert posts[0].json() == {"extension": "jpg"}
    assert "authorization" not in posts[1].headers  # the key stays with Leonardo, never goes to the storage host
    (image_id, stored), = emulator.uploaded.items()
    assert stored == STYLE.data
    body = posts[2].json()
    assert (body["init_image_id"], body["init_strength"], body["num_images"]) == (image_id, 0.5, 2)
    assert len(result.images()) == 2 and [i.cost_usd for i in result.images()] == pytest.approx([24 * 0.0005 / 2] * 2)


def test_runware_sends_the_seed_image_and_mask_as_data_uris(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("runware")
    result = generate(provider, (SUBJECT, MASK), n=3)
    (task,) = emulator.calls("POST")[0].json()
    assert (task["strength"], task["numberResults"]) == (0.6, 3)
    assert data_uri_bytes(task["seedImage"], "image/png") == SUBJECT.data
    assert emulator.received_images == [{"seedImage": ("image/png", SUBJECT.data), "maskImage": ("image/png", MASK.data)}]
    assert len(result.images()) == 3 and all(i.cost_usd == 0.0013 for i in result.images())  # Runware's own cost per result


def test_comfyui_uploads_the_reference_and_queues_the_img2img_graph_that_loads_it(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("comfyui")
    result = generate(provider, (SUBJECT,))
    upload, queued = emulator.calls("POST")
    assert (upload.path, queued.path) == ("/upload/image", "/prompt")
    assert emulator.uploads == [("image/png", SUBJECT.data)]
    graph = queued.json()["prompt"]
    (load,) = [n for n in graph.values() if n["class_type"] == "LoadImage"]
    assert emulator.inputs[load["inputs"]["image"]] == SUBJECT.data
    sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["denoise"] == 0.6 and graph[sampler["inputs"]["latent_image"][0]]["class_type"] == "VAEEncode"
    assert result.data
    generate(provider, (SUBJECT,))  # the same reference again: stored under the same name, not piled up
    assert len(emulator.inputs) == 1


def test_cloudflare_sends_references_to_the_img2img_model_as_a_byte_array(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("cloudflare")
    result = generate(provider, (SUBJECT,))
    (call,) = emulator.calls("POST")
    assert call.path.endswith("/ai/run/@cf/runwayml/stable-diffusion-v1-5-img2img")
    body = call.json()
    assert bytes(body["image"]) == SUBJECT.data and body["strength"] == 0.6 and (body["width"], body["height"]) == (1024, 768)
    assert emulator.received_images == [SUBJECT.data]
    assert result.model == "@cf/runwayml/stable-diffusion-v1-5-img2img" and result.mime_type == "image/png"


def test_cloudflare_sdxl_takes_the_image_itself(service, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CLOUDFLARE_MODEL", "@cf/stabilityai/stable-diffusion-xl-base-1.0")
    emulator, provider = service("cloudflare")
    generate(provider, (SUBJECT,))
    assert emulator.calls("POST")[0].path.endswith("/stable-diffusion-xl-base-1.0") and emulator.received_images == [SUBJECT.data]


def test_worker_sends_references_as_base64_in_the_post(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("worker")
    generate(provider, (SUBJECT, STYLE, MASK))
    assert emulator.received_images == [[("subject", "fox.png", SUBJECT.data), ("style", "winter.jpg", STYLE.data),
                                         ("mask", "sky.png", MASK.data)]]
    sent = emulator.calls("POST")[0].json()["reference_images"]
    assert [r["mime_type"] for r in sent] == ["image/png", "image/jpeg", "image/png"]


def test_worker_by_get_refuses_references(service, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    emulator, _ = service("worker")
    monkeypatch.setenv("WORKER_METHOD", "GET")
    provider = registry.providers.get_class("worker")({**Settings.from_env().component("providers", "worker"), **FAST})
    assert "set WORKER_METHOD=POST" in refused(emulator, provider, (SUBJECT,))


# ---- the capability table says what each service takes -------------------------------------------------------------
def most_the_table_allows(caps: Any) -> tuple[ReferenceImage, ...]:
    roles = [r for r in caps.reference_roles]
    refs = tuple(ReferenceImage(encoded((64, 48), "PNG", (i * 9 % 256, 80, 120)), "image/png", roles[i % len(roles)], f"r{i}.png")
                 for i in range(caps.reference_images))
    return refs + ((MASK,) if caps.mask else ())


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_the_most_references_the_table_declares_go_through_and_n_images_come_back(service, name: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name)
    caps = caps_of(provider)
    assert caps.reference_images >= 1
    refs = most_the_table_allows(caps)
    result = generate(provider, refs, n=caps.max_n)
    assert len(result.images()) == caps.max_n
    assert all(isinstance(i, GeneratedImage) and i.data for i in result.images())


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_n_one_returns_one_image_as_before(service, name: str) -> None:  # type: ignore[no-untyped-def]
    _, provider = service(name)
    result = generate(provider, ())
    assert result.extra == [] and result.images() == [result]


# ---- every error class, with references in the request ----------------------------------------------------------------
@pytest.mark.parametrize("fault", list(EXPECTED_ERRORS))
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_errors_with_references_map_like_any_other(service, name: str, fault: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name, **(TIMES_OUT if fault == "timeout" else {}))
    emulator.fault = fault
    with pytest.raises(ProviderError) as caught:
        generate(provider, (SUBJECT,))
    assert_mapped(caught.value, fault, name)
    assert not provider._key or provider._key not in str(caught.value)  # type: ignore[attr-defined]


# ---- refused before sending ---------------------------------------------------------------------------------------------
def refused(emulator: Emulator, provider: ImageProvider, refs: tuple[ReferenceImage, ...], n: int = 1) -> str:
    with pytest.raises(ProviderError) as caught:
        generate(provider, refs, n)
    assert (caught.value.kind, caught.value.retryable) == ("bad_request", False)
    assert emulator.requests == []  # nothing was sent
    return str(caught.value)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_too_many_references_are_refused_before_sending(service, name: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name)
    caps = caps_of(provider)
    refs = tuple(ReferenceImage(SUBJECT.data, "image/png", "subject", f"p{i}.png") for i in range(caps.reference_images + 1))
    message = refused(emulator, provider, refs)
    assert f"at most {caps.reference_images} reference image(s), not {caps.reference_images + 1}" in message and name in message


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_a_format_the_service_does_not_read_is_refused_naming_the_file(service, name: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name)
    bmp = ReferenceImage(encoded((32, 32), "BMP"), "image/png", "subject", "scans/old.bmp")  # what it claims does not matter
    message = refused(emulator, provider, (bmp,))
    assert "'scans/old.bmp' is image/bmp" in message and "image/png" in message
    not_image = ReferenceImage(b"<html>not an image</html>", "image/png", "subject", "broken.png")
    assert "'broken.png' is not an image" in refused(emulator, provider, (not_image,))


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_a_reference_over_the_configured_size_is_refused(service, name: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name, capabilities={"reference_max_bytes": 100})
    message = refused(emulator, provider, (SUBJECT,))
    assert f"'characters/fox.png' is {len(SUBJECT.data)} bytes; it takes at most 100 bytes per image" in message


def test_the_shipped_size_limit_refuses_a_large_reference(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("cloudflare")  # 2 MB: its img2img input travels as a JSON array of byte values
    noise = Image.frombytes("RGB", (1000, 1000), os.urandom(3_000_000))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    assert len(buf.getvalue()) > 2_000_000
    message = refused(emulator, provider, (ReferenceImage(buf.getvalue(), "image/png", "subject", "huge.png"),))
    assert "'huge.png' is 3.0 MB; it takes at most 2.0 MB per image" in message


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_a_mask_or_more_images_than_the_service_makes_are_refused_where_the_table_says_so(service, name: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name)
    caps = caps_of(provider)
    if not caps.mask:
        assert "takes no mask" in refused(emulator, provider, (SUBJECT, MASK))
    assert f"it makes 1 to {caps.max_n}" in refused(emulator, provider, (SUBJECT,), n=caps.max_n + 1)
    assert "a mask needs an image to edit" in refused(emulator, provider, (MASK,))


def test_a_role_the_model_does_not_take_is_refused(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("leonardo")  # an init image keeps subject and composition; it is no style reference
    assert "does not take the reference role(s) style" in refused(emulator, provider, (STYLE,))


def test_openai_checks_the_mask_as_the_service_does(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("openai")
    wrong_size = ReferenceImage(encoded((32, 32), "PNG", (0, 0, 0, 0), "RGBA"), "image/png", "mask", "masks/small.png")
    assert "masks/small.png is 32x32; it must be the size of the image it edits (characters/fox.png)" in refused(
        emulator, provider, (SUBJECT, wrong_size))
    opaque = ReferenceImage(encoded((64, 48), "PNG"), "image/png", "mask", "masks/opaque.png")
    assert "has no alpha channel" in refused(emulator, provider, (SUBJECT, opaque))
    jpeg_mask = ReferenceImage(encoded((64, 48), "JPEG"), "image/jpeg", "mask", "masks/m.jpg")
    assert "must be a PNG" in refused(emulator, provider, (SUBJECT, jpeg_mask))


def test_gemini_refuses_references_that_together_exceed_the_inline_limit(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("gemini", inline_max_bytes=len(SUBJECT.data) + 10)
    assert "add up to" in refused(emulator, provider, (SUBJECT, SUBJECT))


def test_fal_without_an_edit_model_says_what_to_set(service) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service("fal", edit_model="")
    assert "[providers.fal] edit_model is not set" in refused(emulator, provider, (SUBJECT,))


# ---- the service's own refusal, when the table lets a reference through -------------------------------------------------
@pytest.mark.parametrize("name, says", [
    ("openai", "unsupported mimetype"),
    ("gemini", "Unsupported MIME type: image/bmp"),
    ("leonardo", "not a png image"),
])
def test_a_reference_the_service_refuses_is_a_clear_bad_request(service, name: str, says: str) -> None:  # type: ignore[no-untyped-def]
    emulator, provider = service(name, capabilities={"reference_formats": ["image/png", "image/bmp"]})
    bmp = ReferenceImage(encoded((32, 32), "BMP"), "image/bmp", "subject", "scan.bmp")
    with pytest.raises(ProviderError) as caught:
        generate(provider, (bmp,))
    assert (caught.value.kind, caught.value.retryable) == ("bad_request", False) and says in str(caught.value)
    assert emulator.requests  # this time it was the service that said no


def test_the_img2img_workflow_is_valid_api_format_json() -> None:
    from pipeline.services.comfyui import DEFAULT_IMG2IMG_WORKFLOW

    graph = json.loads(DEFAULT_IMG2IMG_WORKFLOW.read_text())
    links = [(node_id, v[0]) for node_id, node in graph.items() for v in node["inputs"].values() if isinstance(v, list)]
    assert links and all(target in graph for _, target in links)  # every link names a node of the graph


def test_the_edit_model_is_priced_by_its_own_per_image_price() -> None:
    from pipeline.prices import table_cost

    fal = Settings.from_env().component("providers", "fal")  # fal bills per megapixel; Kontext per image
    assert table_cost(fal, "fal-ai/flux-pro/kontext", 1024, 768) == 0.04
    assert table_cost(fal, "fal-ai/flux/schnell", 1024, 768) == 0.003
    assert table_cost(fal, "fal-ai/flux/dev", 1024, 1024) == pytest.approx(0.025 * 2)  # 1.05 MP: two started megapixels
