"""OpenAI Images through the official SDK: ``images.generate``, or ``images.edit`` with reference images.

The client is built per call inside the running loop with ``max_retries=0`` (the pipeline's
policy decides about retries). GPT image models answer base64; cost comes from ``usage`` tokens
at the configured per-million rates, else the price table. Moderation refusals are HTTP 400
with ``code`` ``moderation_blocked`` or ``content_policy_violation``.

Vision judge and refiner: OpenAI vision judge and refiner: Chat Completions with a JSON-schema response format, temperature 0.

The image goes as a ``data:`` URL in an ``image_url`` part. A refusal (``message.refusal``) or
a moderation error is a content block. Cost comes from ``usage`` tokens at the configured
rates. The SDK client is built per call with ``max_retries=0``.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar

import httpx2
import openai
from openai.types.chat import ChatCompletionContentPartParam

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import wire
from pipeline.services.chat import Answer, ChatJudge, ChatRefiner, ChatService
from pipeline.services.remote import Remote

BLOCK_CODES = {"moderation_blocked", "content_policy_violation"}


def openai_error(service: str, e: Exception) -> ProviderError:
    """An openai SDK exception as the pipeline's error (shared by the provider, judge and refiner)."""
    inner = wire.provider_error_in(e)  # a body cap or credentials refusal raised inside the transport
    if inner is not None:
        return inner
    if isinstance(e, openai.APITimeoutError):
        return ProviderError(f"{service} did not answer in time", kind="timeout", retryable=True)
    if isinstance(e, openai.APIConnectionError):
        return ProviderError(f"{service} could not be reached: {type(e.__cause__ or e).__name__}", kind="connection", retryable=True)
    if isinstance(e, openai.APIStatusError):
        body = e.body if isinstance(e.body, dict) else {}
        error = body.get("error", body)  # the SDK hands over the inner error object (older ones the whole body)
        code = (error.get("code") if isinstance(error, dict) else None) or getattr(e, "code", None)
        status = e.status_code
        text = f"{service} answered HTTP {status}: {wire.error_text({'error': error}) or e.message}"
        if code in BLOCK_CODES:
            return ContentBlocked(text, http_status=status)
        kind = "not_found" if code == "model_not_found" else wire.kind_for_status(status)
        retryable = wire.retryable_status(status, e.response.headers) and code != "insufficient_quota"
        return ProviderError(text, kind=kind, http_status=status, retryable=retryable, retry_after=wire.retry_after(e.response.headers))
    if isinstance(e, (openai.APIResponseValidationError, ValueError, KeyError, TypeError, AttributeError, IndexError)):
        return ProviderError(f"{service} sent a response that could not be read: {type(e).__name__}", kind="malformed", retryable=True)
    return ProviderError(f"{service}: {type(e).__name__}: {e}", kind="internal")


def sdk_client(component: Any, cap: wire.BodyCap | None = None) -> openai.AsyncOpenAI:
    """A fresh SDK client for one call: the component's key, base URL and timeout; no SDK retries.
    Its httpx2 transport (the SDK's HTTP library) caps the body (``cap``, default JSON) and keeps the
    key to the service's origin; it shares our TLS context (~20 ms less CPU per call)."""
    transport = wire.guarded_transport(component.guard(cap), httpx2)
    return openai.AsyncOpenAI(api_key=component._key, base_url=component.base_url or None, timeout=component.timeout_s, max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(transport=transport))


def closest_size(width: int, height: int, sizes: list[str]) -> str:
    """The offered size with the nearest aspect ratio (ties: the nearer area)."""
    def score(size: str) -> tuple[float, float]:
        w, h = (int(x) for x in size.split("x"))
        return abs(w / h - width / height), abs(w * h - width * height)
    return min(sizes, key=score)


class OpenAIService(Remote):
    """What the OpenAI provider, judge and refiner share: key, base URL and the connection probe."""

    name = "openai"
    key_env_var: ClassVar[str | None] = "OPENAI_API_KEY"
    base_url_env_var: ClassVar[str | None] = "OPENAI_BASE_URL"
    default_base_url = "https://api.openai.com/v1"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"{self.base_url}/models/{self.model}", {"headers": {"Authorization": f"Bearer {self._key}"}}


class OpenAIImagesProvider(OpenAIService, ImageProvider):
    label = "OpenAI Images"
    model_env_var = "OPENAI_IMAGE_MODEL"

    def _size(self, width: int, height: int) -> str:
        if self.settings.get("any_size"):  # gpt-image-2: any WxH in multiples of 16
            return f"{max(16, round(width / 16) * 16)}x{max(16, round(height / 16) * 16)}"
        return closest_size(width, height, list(self.settings.get("sizes", ["1024x1024", "1536x1024", "1024x1536"])))

    def _usage_cost(self, usage: Any) -> float | None:
        return self._token_cost(getattr(usage, "input_tokens", None), getattr(usage, "output_tokens", None)) if usage else None

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        size = self._size(request.width, request.height)
        options: dict[str, Any] = {"model": self.model, "prompt": request.prompt, "n": 1, "size": size,
                                   **dict(self.settings.get("parameters", {}))}
        try:
            async with sdk_client(self, self.network.image_json) as client:
                if request.reference_images:
                    files = [(f"reference_{i}.png", data, "image/png") for i, data in enumerate(request.reference_images, 1)]
                    response = await client.images.edit(image=files, **options)
                else:
                    response = await client.images.generate(**options)
            item = response.data[0]
            if not item.b64_json:
                raise ProviderError(f"{self.name} sent no image data (b64_json) for model {self.model}", kind="malformed", retryable=True)
            data = wire.b64decode(self.name, item.b64_json, self.network.image)
        except ProviderError:
            raise
        except Exception as e:  # noqa: BLE001 (every SDK failure maps to one of the pipeline's kinds)
            raise openai_error(self.name, e) from None
        fmt = getattr(response, "output_format", None) or options.get("output_format") or "png"
        return GeneratedImage(data=data, mime_type=f"image/{'jpeg' if fmt == 'jpg' else fmt}", model=self.model, http_status=200,
                              cost_usd=self._usage_cost(getattr(response, "usage", None)), metadata={"size": size},
                              request_id=str(getattr(response, "_request_id", None) or ""))  # the x-request-id the SDK keeps


class OpenAIChat(OpenAIService, ChatService):
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, image: bytes | None = None, mime_type: str = "") -> Answer:
        content: list[ChatCompletionContentPartParam] = [{"type": "text", "text": text}]
        if image:
            url = f"data:{mime_type or 'image/png'};base64,{base64.b64encode(image).decode()}"
            content.insert(0, {"type": "image_url", "image_url": {"url": url}})
        try:
            async with sdk_client(self) as client:
                response = await client.chat.completions.create(
                    model=self.model, temperature=0, messages=[{"role": "system", "content": system}, {"role": "user", "content": content}],
                    response_format={"type": "json_schema", "json_schema": {"name": schema["title"], "schema": schema}},
                )
            message = response.choices[0].message
        except Exception as e:  # noqa: BLE001 (every SDK failure maps to one of the pipeline's kinds)
            raise openai_error(self.name, e) from None
        if getattr(message, "refusal", None):
            raise ContentBlocked(f"{self.name} refused: {message.refusal}", http_status=200)
        if not message.content:
            raise ProviderError(f"{self.name} returned an empty answer", kind="malformed", retryable=True)
        usage = getattr(response, "usage", None)
        cost = self._token_cost(getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None)) if usage else None
        return Answer(message.content, getattr(response, "model", None) or self.model, cost)


class OpenAIJudge(OpenAIChat, ChatJudge):
    label = "OpenAI vision judge"
    model_env_var = "OPENAI_JUDGE_MODEL"


class OpenAIRefiner(OpenAIChat, ChatRefiner):
    label = "OpenAI prompt refiner"
    model_env_var = "OPENAI_REFINER_MODEL"
