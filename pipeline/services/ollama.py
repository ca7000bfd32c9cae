"""Ollama: a local server's ``/api/chat`` as a vision judge and prompt refiner (``format`` = the JSON schema).

The judge's images (the generated one, then the prompt's subject references) go in the user
message's ``images`` array as raw base64; the text says which image is which."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, ClassVar

import httpx

from pipeline.services import wire
from pipeline.services.chat import Answer, ChatJudge, ChatRefiner, ChatService
from pipeline.services.judge_images import Picture


class OllamaChat(ChatService):
    """A local Ollama server's ``/api/chat`` with ``format`` = the JSON schema and ``stream: false``."""

    name = "ollama"
    key_env_var: ClassVar[str | None] = None  # local; OLLAMA_API_KEY is sent if set (Ollama's own client does the same)
    base_url_env_var: ClassVar[str | None] = "OLLAMA_HOST"
    default_base_url = "http://127.0.0.1:11434"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        base = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        return "GET", f"{base}/api/tags", {}

    def model_missing(self, response: httpx.Response) -> str | None:
        """/api/tags lists the pulled models (``name:tag``; a name alone means ``:latest``)."""
        try:
            models = response.json().get("models")
        except (ValueError, AttributeError):
            return None
        if not isinstance(models, list):
            return None
        names = {str(m.get(k, "")) for m in models if isinstance(m, dict) for k in ("name", "model")}
        wanted = self.model if ":" in self.model else f"{self.model}:latest"
        if self.model in names or wanted in names or wanted.removesuffix(":latest") in names:
            return None
        pulled = ", ".join(sorted(n for n in names if n)) or "none"
        return f"the model {self.model!r} is not pulled on this server (it has: {pulled}); run `ollama pull {self.model}`"

    async def ask(self, system: str, text: str, schema: dict[str, Any], *, images: Sequence[Picture] = ()) -> Answer:
        user: dict[str, Any] = {"role": "user", "content": text}
        if images:  # raw base64, no data: prefix (the judge's candidate first, then its references)
            user["images"] = [base64.b64encode(p.data).decode() for p in images]
        payload = {"model": self.model, "messages": [{"role": "system", "content": system}, user], "format": schema,
                   "stream": False, "options": {"temperature": 0}, "keep_alive": str(self.settings.get("keep_alive", "5m"))}
        token = wire.setting("OLLAMA_API_KEY", {}, "")
        base = self.base_url if "://" in self.base_url else f"http://{self.base_url}"
        async with self.client(headers={"Authorization": f"Bearer {token}"} if token else {}) as http:
            response = await wire.send(http, self.name, "POST", f"{base}/api/chat", json=payload)
        if response.status_code != 200:
            raise wire.status_error(self.name, response, wire.error_text(wire.error_body(response)))
        body = wire.json_of(self.name, response)
        return Answer(str(wire.field(self.name, body, "message", "content")), str(body.get("model") or self.model),
                      float(self.settings.get("price_per_call", 0.0)))


class OllamaJudge(OllamaChat, ChatJudge):
    label = "Ollama local vision judge"
    model_env_var = "OLLAMA_JUDGE_MODEL"


class OllamaRefiner(OllamaChat, ChatRefiner):
    label = "Ollama local prompt refiner"
    model_env_var = "OLLAMA_REFINER_MODEL"
