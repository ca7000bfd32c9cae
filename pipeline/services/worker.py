"""A user-deployed HTTP image worker: ``GET <url>?prompt=…`` or ``POST <url>`` with JSON, answering image bytes.

The request carries ``prompt``, ``width``, ``height``, ``seed`` (and ``negative_prompt`` when set);
``WORKER_TOKEN``, if set, goes as a Bearer token. The answer must be an ``image/*`` body; a JSON
``{"error": …}`` body is read for its message, and ``{"blocked": true}`` (or HTTP 451) is a
content-policy block.

Reference images (POST only) go in the JSON body as ``reference_images``: a list of
``{"data": <base64>, "mime_type", "role": subject|style|composition|mask, "name"}``.
"""

from __future__ import annotations

from typing import Any

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ConfigError, ProviderError
from pipeline.services import references, wire
from pipeline.services.remote import Remote


class WorkerProvider(Remote, ImageProvider):
    name = "worker"
    label = "your HTTP image worker"
    key_env_var = None  # WORKER_TOKEN is optional
    base_url_env_var = "WORKER_URL"
    required_env_vars = ("WORKER_URL",)

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        if not self.base_url:
            raise ConfigError("worker: set WORKER_URL to the worker's address")
        self._key = wire.setting("WORKER_TOKEN", {}, "")
        self.method = wire.setting("WORKER_METHOD", self.settings, "method", "POST").upper()
        if self.method not in ("GET", "POST"):
            raise ConfigError(f"worker: WORKER_METHOD is {self.method!r}; use GET or POST")
        self.model = self.model or "worker"

    probe_ok = frozenset({200, 400, 404, 405, 422})  # asked without a prompt: any answer but a refusal means reachable

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", self.base_url, {"headers": {"Authorization": f"Bearer {self._key}"} if self._key else {}}

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        if request.reference_images and self.method == "GET":
            raise references.refusal(self.name, self.model, "reference images go in a POST body; set WORKER_METHOD=POST")
        params: dict[str, Any] = {"prompt": request.prompt, "width": request.width, "height": request.height, "seed": request.seed}
        if request.negative_prompt:
            params["negative_prompt"] = request.negative_prompt
        if request.reference_images:
            params["reference_images"] = [{"data": references.b64(r), "mime_type": references.mime_of(r), "role": r.role,
                                           "name": references.filename(r, i)} for i, r in enumerate(request.reference_images, 1)]
        headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
        async with self.client(headers=headers, cap=self.network.image) as http:
            if self.method == "GET":
                response = await wire.send(http, self.name, "GET", self.base_url, params=params)
            else:
                response = await wire.send(http, self.name, "POST", self.base_url, json=params)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200 or content_type == "application/json":
            message, blocked = "", response.status_code == 451
            if content_type == "application/json":
                body = wire.error_body(response)
                message = wire.error_text(body)
                blocked = blocked or (isinstance(body, dict) and bool(body.get("blocked")))
            if response.status_code == 200 and not blocked:
                raise ProviderError(f"{self.name} answered JSON instead of an image: {message or response.text[:120]!r}",
                                    kind="malformed", http_status=200, retryable=True)
            raise wire.status_error(self.name, response, message, blocked=blocked)
        if not content_type.startswith("image/"):
            raise ProviderError(f"{self.name} answered {content_type or 'no content type'} instead of an image",
                                kind="malformed", http_status=200, retryable=True)
        return GeneratedImage(data=response.content, mime_type=content_type, model=self.model, http_status=200)
