"""OpenAI Images through the official SDK: ``images.generate``, or ``images.edit`` with reference images.

The client is built per call inside the running loop with ``max_retries=0`` (the pipeline's
policy decides about retries). GPT image models answer base64; cost comes from ``usage`` tokens
at the configured per-million rates, else the price table. Moderation refusals are HTTP 400
with ``code`` ``moderation_blocked`` or ``content_policy_violation``. Reference images go to
``images.edit`` as ``image[]`` parts and a ``mask``-role image as the ``mask`` part (a PNG with
alpha, the first image's size); ``n`` images per call come back as the first image plus ``extra``.

Vision judge and refiner: OpenAI vision judge and refiner: Chat Completions with a JSON-schema response format, temperature 0.

The image goes as a ``data:`` URL in an ``image_url`` part, followed by the prompt's subject
references the same way (the text says which image is which). A refusal (``message.refusal``) or
a moderation error is a content block. Cost comes from ``usage`` tokens at the configured
rates. The SDK client is built per call with ``max_retries=0``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import quotas
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, ReferenceImage
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import references, wire
from pipeline.services.chat import Answer, ChatJudge, ChatRefiner, ChatService
from pipeline.services.judge_images import Picture
from pipeline.services.lazy import lazy_module
from pipeline.services.remote import Remote

if TYPE_CHECKING:
    import httpx2
    import openai
    from openai.types.chat import ChatCompletionContentPartParam
else:  # the SDK (~0.5 s to import) is imported when an OpenAI service is first used
    httpx2, openai = lazy_module("httpx2"), lazy_module("openai")

BLOCK_CODES = {"moderation_blocked", "content_policy_violation"}
MASK_MAX_BYTES = 4_000_000  # images.edit: "a valid PNG file, less than 4MB"


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

    async def read_quota(response: httpx2.Response) -> None:  # x-ratelimit-* on every answer, errors too
        quotas.board.observe_headers(component.name, response.headers)

    return openai.AsyncOpenAI(api_key=component._key, base_url=component.base_url or None, timeout=component.timeout_s, max_retries=0,
                              http_client=openai.DefaultAsyncHttpxClient(transport=transport, event_hooks={"response": [read_quota]}))


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
        images, mask = references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        if mask is not None:
            self._check_mask(mask, images[0])
        size = "auto" if request.auto_size else self._size(request.width, request.height)  # "auto": the service chooses
        options: dict[str, Any] = {"model": self.model, "prompt": request.prompt, "n": request.n, "size": size,
                                   **dict(self.settings.get("parameters", {}))}
        try:
            async with sdk_client(self, self.network.image_json) as client:
                if images:  # images.edit: the references as image[] parts, the mask as its own part
                    files = [(references.filename(r, i), r.data, references.mime_of(r)) for i, r in enumerate(images, 1)]
                    if mask is not None:
                        options["mask"] = (references.filename(mask, 0), mask.data, "image/png")
                    response = await client.images.edit(image=files, **options)
                else:
                    response = await client.images.generate(**options)
            items = list(response.data or [])
            if not items or any(not item.b64_json for item in items):
                raise ProviderError(f"{self.name} sent no image data (b64_json) for model {self.model}", kind="malformed", retryable=True)
            datas = [wire.b64decode(self.name, str(item.b64_json), self.network.image) for item in items]
        except ProviderError:
            raise
        except Exception as e:  # noqa: BLE001 (every SDK failure maps to one of the pipeline's kinds)
            raise openai_error(self.name, e) from None
        fmt = getattr(response, "output_format", None) or options.get("output_format") or "png"
        cost = references.shares(self._usage_cost(getattr(response, "usage", None)), len(datas))
        made = [GeneratedImage(data=data, mime_type=f"image/{'jpeg' if fmt == 'jpg' else fmt}", model=self.model, http_status=200,
                               cost_usd=cost, metadata={"size": size, "index": i} if len(datas) > 1 else {"size": size},
                               request_id=str(getattr(response, "_request_id", None) or ""))  # the x-request-id the SDK keeps
                for i, data in enumerate(datas)]
        made[0].extra = made[1:]
        return made[0]

    def _check_mask(self, mask: ReferenceImage, image: ReferenceImage) -> None:
        """OpenAI's mask rules (images.edit): a PNG with an alpha channel (transparent = to edit),
        under 4 MB, the size of the first image."""
        kind, size = references.sniffed(mask.data)
        name = mask.name or "the mask"
        if kind != "image/png":
            raise references.refusal(self.name, self.model, f"{name} must be a PNG (it is {kind or 'not an image'})")
        if len(mask.data) > MASK_MAX_BYTES:
            raise references.refusal(self.name, self.model, f"{name} is over {MASK_MAX_BYTES // 1_000_000} MB")
        if size != references.sniffed(image.data)[1]:
            raise references.refusal(self.name, self.model, f"{name} is {size[0]}x{size[1]}; it must be the size of the image it edits "
                                                            f"({image.name or 'the first reference'})")
        if not references.has_alpha(mask.data):
            raise references.refusal(self.name, self.model, f"{name} has no alpha channel (its transparent pixels mark what to edit)")


class OpenAIChat(OpenAIService, ChatService):
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, images: Sequence[Picture] = ()) -> Answer:
        # one image_url part per image, a data: URL each (the judge's candidate first, then its references), then the text
        content: list[ChatCompletionContentPartParam] = [
            {"type": "image_url", "image_url": {"url": f"data:{p.mime_type};base64,{base64.b64encode(p.data).decode()}"}} for p in images]
        content.append({"type": "text", "text": text})
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
