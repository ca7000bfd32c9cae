"""Google Gemini through google-genai ``generate_content`` (the legacy google-generativeai is not used).

One client per call, built inside the running loop, with ``base_url`` from ``GEMINI_BASE_URL``
and no SDK retries (google-genai retries only when ``retry_options`` is set; it is not). A
``429`` carries its wait in ``RetryInfo.retryDelay``, which becomes ``retry_after``. Blocks are
HTTP 200: ``promptFeedback.blockReason``, or a candidate ``finishReason`` such as
``IMAGE_SAFETY`` with no image.

Image generation: Gemini image models through google-genai ``generate_content`` with an image response modality.

The requested size becomes the nearest supported aspect ratio; a 200 answer with a block reason,
or a safety finish reason and no image, is a content block; a 200 with no image otherwise is a
malformed answer. Cost comes from the usage metadata's tokens at the configured rates. Reference
images go as inline image parts (``inline_data``) before the prompt, each after a text part
naming its role; together they stay under ``inline_max_bytes``.

Vision judge: the generated image and then the prompt's subject references as ``inline_data``
parts, before the text that says which image is which (:mod:`pipeline.services.judge_images`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import httpx

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ContentBlocked, ProviderError, human_bytes
from pipeline.services import references, wire
from pipeline.services.chat import Answer, ChatJudge, ChatRefiner, ChatService
from pipeline.services.judge_images import Picture
from pipeline.services.lazy import lazy_module
from pipeline.services.remote import Remote

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors, types
else:  # google-genai (~0.7 s to import) is imported when a Gemini service is first used
    genai, errors, types = lazy_module("google.genai"), lazy_module("google.genai.errors"), lazy_module("google.genai.types")

BLOCK_FINISH = {"SAFETY", "PROHIBITED_CONTENT", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "RECITATION",
                "IMAGE_RECITATION"}
KEY_INVALID = "API key not valid"  # Gemini answers a bad key with 400 INVALID_ARGUMENT, reason API_KEY_INVALID


def retry_delay(details: Any) -> float | None:
    """``RetryInfo.retryDelay`` ("53s", "1.5s") from an error's details, if present."""
    for d in details if isinstance(details, list) else []:
        if isinstance(d, dict) and str(d.get("@type", "")).endswith("RetryInfo"):
            m = re.fullmatch(r"([\d.]+)s", str(d.get("retryDelay", "")))
            if m:
                return float(m.group(1))
    return None


def gemini_error(service: str, e: Exception) -> ProviderError:
    inner = wire.provider_error_in(e)  # a body cap or credentials refusal raised inside the transport
    if inner is not None:
        return inner
    if isinstance(e, errors.APIError):
        status = int(e.code or 0)
        details = e.details.get("error", {}).get("details") if isinstance(e.details, dict) else e.details
        text = f"{service} answered HTTP {status} ({e.status or 'error'}): {e.message or ''}".rstrip(": ")
        kind = "auth" if status == 400 and KEY_INVALID in (e.message or "") else wire.kind_for_status(status)
        return ProviderError(text, kind=kind, http_status=status,
                             retryable=wire.retryable_status(status), retry_after=retry_delay(details))
    name = type(e).__name__
    if "Timeout" in name:
        return ProviderError(f"{service} did not answer in time", kind="timeout", retryable=True)
    if "Connect" in name or isinstance(e, OSError):
        return ProviderError(f"{service} could not be reached: {name}", kind="connection", retryable=True)
    if isinstance(e, (ValueError, KeyError, TypeError, AttributeError, IndexError)):
        return ProviderError(f"{service} sent a response that could not be read: {name}", kind="malformed", retryable=True)
    return ProviderError(f"{service}: {name}: {e}", kind="internal")


class GeminiService(Remote):
    name = "gemini"
    key_env_var: ClassVar[str | None] = "GEMINI_API_KEY"
    base_url_env_var: ClassVar[str | None] = "GEMINI_BASE_URL"
    default_base_url = "https://generativelanguage.googleapis.com"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"{self.base_url}/v1beta/models/{self.model}", {"headers": {"x-goog-api-key": self._key}}

    def key_refused(self, response: Any) -> bool:
        return response.status_code in (401, 403) or (response.status_code == 400 and KEY_INVALID in response.text)

    async def _generate(self, contents: list[Any], config: types.GenerateContentConfig, cap: wire.BodyCap | None = None) -> Any:
        """One ``generate_content`` call through our own httpx client: its transport caps the body
        (``cap``, default JSON) and keeps the key to the service's origin."""
        tls = wire.tls_context()  # the SDK would load the CA bundle twice per client otherwise (~40 ms of CPU)
        http = httpx.AsyncClient(transport=wire.guarded_transport(self.guard(cap)), timeout=self.timeout_s)
        client = genai.Client(api_key=self._key, http_options=types.HttpOptions(
            base_url=self.base_url, api_version="v1beta", timeout=int(self.timeout_s * 1000),
            client_args={"verify": tls}, httpx_async_client=http))
        try:
            return await client.aio.models.generate_content(model=self.model, contents=contents, config=config)
        except ProviderError:
            raise
        except Exception as e:  # noqa: BLE001 (every SDK failure maps to one of the pipeline's kinds)
            raise gemini_error(self.name, e) from None
        finally:
            await client.aio.aclose()
            await http.aclose()

    def _check_blocked(self, response: Any) -> None:
        feedback = getattr(response, "prompt_feedback", None)
        reason = getattr(feedback, "block_reason", None) if feedback else None
        if reason:
            raise ContentBlocked(f"{self.name} blocked the prompt (blockReason {getattr(reason, 'value', reason)})", http_status=200)

    def _usage_cost(self, response: Any) -> float | None:
        usage = getattr(response, "usage_metadata", None)
        if usage is None:
            return None
        return self._token_cost(getattr(usage, "prompt_token_count", None), getattr(usage, "candidates_token_count", None))


class GeminiChat(GeminiService, ChatService):
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, images: Sequence[Picture] = ()) -> Answer:
        # the images as inline_data parts in order (the judge's candidate first, then its references), then the text
        contents: list[Any] = [types.Part.from_bytes(data=p.data, mime_type=p.mime_type) for p in images]
        contents.append(text)
        response = await self._generate(contents, types.GenerateContentConfig(
            system_instruction=system, temperature=0.0, response_mime_type="application/json", response_json_schema=schema))
        self._check_blocked(response)
        try:
            answer = response.text
        except (ValueError, AttributeError):
            answer = None
        if not answer:
            finish = response.candidates[0].finish_reason if getattr(response, "candidates", None) else None
            raise ProviderError(f"{self.name} returned no text (finishReason {getattr(finish, 'value', finish)})", kind="malformed", retryable=True)
        return Answer(answer, getattr(response, "model_version", None) or self.model, self._usage_cost(response))


class GeminiJudge(GeminiChat, ChatJudge):
    label = "Gemini vision judge"
    model_env_var = "GEMINI_JUDGE_MODEL"


class GeminiRefiner(GeminiChat, ChatRefiner):
    label = "Gemini prompt refiner"
    model_env_var = "GEMINI_REFINER_MODEL"


ASPECT_RATIOS = ["1:1", "2:3", "3:2", "3:4", "4:3", "9:16", "16:9", "21:9"]


def nearest_aspect_ratio(width: int, height: int) -> str:
    def ratio(r: str) -> float:
        w, h = (int(x) for x in r.split(":"))
        return w / h
    return min(ASPECT_RATIOS, key=lambda r: abs(ratio(r) - width / height))


class GeminiImageProvider(GeminiService, ImageProvider):
    label = "Gemini image model"
    model_env_var = "GEMINI_IMAGE_MODEL"

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        images, _ = references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        inline = sum(len(r.data) for r in images)
        limit = int(self.settings.get("inline_max_bytes", 20_000_000))
        if inline > limit:
            raise references.refusal(self.name, self.model, f"its reference images add up to {human_bytes(inline)}; "
                                                            f"inline image parts may total {human_bytes(limit)}")
        contents: list[Any] = []
        for i, ref in enumerate(images, 1):  # each image part follows a text part naming its role, then the prompt
            contents += [f"Reference image {i} ({ref.role}):", types.Part.from_bytes(data=ref.data, mime_type=references.mime_of(ref))]
        contents.append(request.prompt)
        # size "auto": no aspect ratio, so the model chooses (with a reference image: the reference's)
        aspect = None if request.auto_size else nearest_aspect_ratio(request.width, request.height)
        response = await self._generate(contents, types.GenerateContentConfig(
            response_modalities=["IMAGE"], seed=request.seed,
            image_config=types.ImageConfig(aspect_ratio=aspect, image_size=str(self.settings.get("image_size", "1K")))),
            cap=self.network.image_json)
        self._check_blocked(response)
        candidates = getattr(response, "candidates", None) or []
        parts = (candidates[0].content.parts or []) if candidates and candidates[0].content else []
        image = next((p.inline_data for p in parts if getattr(p, "inline_data", None) and p.inline_data.data), None)
        finish = getattr(candidates[0], "finish_reason", None) if candidates else None
        finish_name = str(getattr(finish, "value", finish) or "")
        if image is None:
            if finish_name in BLOCK_FINISH:
                raise ContentBlocked(f"{self.name} refused to draw the prompt (finishReason {finish_name})", http_status=200)
            raise ProviderError(f"{self.name} answered without an image (finishReason {finish_name or 'none'})", kind="malformed",
                                http_status=200, retryable=True)
        return GeneratedImage(data=image.data, mime_type=image.mime_type, model=self.model, http_status=200,
                              cost_usd=self._usage_cost(response), metadata={"aspect_ratio": aspect or "auto", "finish_reason": finish_name},
                              request_id=str(getattr(response, "response_id", None) or ""))
