"""OpenAI vision judge and refiner: Chat Completions with a JSON-schema response format, temperature 0.

The image goes as a ``data:`` URL in an ``image_url`` part. A refusal (``message.refusal``) or
a moderation error is a content block. Cost comes from ``usage`` tokens at the configured
rates. The SDK client is built per call with ``max_retries=0``.
"""

from __future__ import annotations

import base64
from typing import Any

from . import wire
from .chat import Answer, ChatJudge, ChatRefiner, ChatService
from .errors import ContentBlocked, ProviderError
from .providers.openai_images import OpenAIService, openai_error, sdk_client


class OpenAIChat(OpenAIService, ChatService):
    async def ask(self, system: str, text: str, schema: dict[str, Any], *, image: bytes | None = None, mime_type: str = "") -> Answer:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
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


class OllamaChat(ChatService):
    """A local Ollama server's ``/api/chat`` with ``format`` = the JSON schema and ``stream: false``."""

    name = "ollama"
    key_env_var = None  # local; OLLAMA_API_KEY is sent if set (Ollama's own client does the same)
    base_url_env_var = "OLLAMA_HOST"
    default_base_url = "http://127.0.0.1:11434"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        base = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        return "GET", f"{base}/api/tags", {}

    async def ask(self, system: str, text: str, schema: dict[str, Any], *, image: bytes | None = None, mime_type: str = "") -> Answer:
        user: dict[str, Any] = {"role": "user", "content": text}
        if image:
            user["images"] = [base64.b64encode(image).decode()]
        payload = {"model": self.model, "messages": [{"role": "system", "content": system}, user], "format": schema,
                   "stream": False, "options": {"temperature": 0}, "keep_alive": str(self.settings.get("keep_alive", "5m"))}
        token = wire.setting("OLLAMA_API_KEY", {}, "")
        base = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        async with wire.client(headers={"Authorization": f"Bearer {token}"} if token else {}, timeout_s=self.timeout_s) as http:
            response = await wire.send(http, self.name, "POST", f"{base}/api/chat", json=payload)
        if response.status_code != 200:
            try:
                message = str(response.json().get("error", ""))
            except ValueError:
                message = ""
            raise wire.status_error(self.name, response, message)
        body = wire.json_of(self.name, response)
        return Answer(str(wire.field(self.name, body, "message", "content")), str(body.get("model") or self.model),
                      float(self.settings.get("price_per_call", 0.0)))


class OllamaJudge(OllamaChat, ChatJudge):
    label = "Ollama local vision judge"
    model_env_var = "OLLAMA_JUDGE_MODEL"


class OllamaRefiner(OllamaChat, ChatRefiner):
    label = "Ollama local prompt refiner"
    model_env_var = "OLLAMA_REFINER_MODEL"
