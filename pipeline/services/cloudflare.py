"""Cloudflare Workers AI: ``POST {base}/accounts/{account}/ai/run/{model}``.

flux-1-schnell answers JSON (``{"result": {"image": <base64 JPEG>}, "success": true}``); SDXL
answers raw image bytes. Errors come in the v4 envelope ``{"success": false, "errors":
[{"code", "message"}]}``: 3036 (daily free allocation used up) is not retried, 3040 (out of
capacity) is; code 3030-range NSFW refusals and messages about NSFW content are blocks.

A prompt with a reference image goes to ``edit_model`` (SD 1.5 img2img) unless the configured
model takes images itself (``model_capabilities``); the image goes as ``image``, an array of
byte values, with ``strength``; the img2img models answer raw PNG bytes.
"""

from __future__ import annotations

from typing import Any

import httpx

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ProviderError
from pipeline.services import references, wire
from pipeline.services.remote import Remote

NO_RETRY_CODES = {3036}
RETRY_CODES = {3040, 3007, 3008}


class CloudflareProvider(Remote, ImageProvider):
    name = "cloudflare"
    label = "Cloudflare Workers AI"
    key_env_var = "CLOUDFLARE_API_TOKEN"
    required_env_vars = ("CLOUDFLARE_ACCOUNT_ID",)
    base_url_env_var = "CLOUDFLARE_BASE_URL"
    default_base_url = "https://api.cloudflare.com/client/v4"
    model_env_var = "CLOUDFLARE_MODEL"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.account_id = wire.require("CLOUDFLARE_ACCOUNT_ID", self.name)

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"{self.base_url}/accounts/{self.account_id}/ai/models/search", {
            "headers": {"Authorization": f"Bearer {self._key}"}, "params": {"search": self.model.rsplit("/", 1)[-1]}}

    def model_missing(self, response: httpx.Response) -> str | None:
        """The catalogue search lists the models by name (``@cf/owner/model``)."""
        try:
            found = response.json().get("result")
        except (ValueError, AttributeError):
            return None
        if not isinstance(found, list):
            return None
        names = {str(m.get("name", "")) for m in found if isinstance(m, dict)}
        return None if self.model in names else f"Workers AI has no model {self.model!r} (CLOUDFLARE_MODEL or [providers.cloudflare] model)"

    def _fail(self, response: httpx.Response) -> ProviderError:
        body = wire.error_body(response)
        errors = (body.get("errors") or []) if isinstance(body, dict) else []
        codes = {e.get("code") for e in errors if isinstance(e, dict)}
        message = wire.error_text(body)
        blocked = "nsfw" in message.lower() or "content polic" in message.lower()
        retryable = False if codes & NO_RETRY_CODES else True if codes & RETRY_CODES else None
        return wire.status_error(self.name, response, message, blocked=blocked, retryable=retryable)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        model = references.model_for(self.name, self.settings, self.model, request)  # the img2img model when there are references
        images, mask = references.check(self.name, model, request, references.capabilities(self.name, self.settings, model))
        payload: dict[str, Any] = {"prompt": request.prompt, "seed": request.seed, **dict(self.settings.get("parameters", {}))}
        if "flux" not in model:  # SDXL and friends take the size and a negative prompt
            payload.update(width=request.width, height=request.height)
            if request.negative_prompt:
                payload["negative_prompt"] = request.negative_prompt
        if images:  # img2img: the image as an array of byte values (uint8), as the model pages show
            payload.update(image=list(images[0].data), strength=float(self.settings.get("image_strength", 0.6)))
            if mask is not None:
                payload["mask"] = list(mask.data)
        url = f"{self.base_url}/accounts/{self.account_id}/ai/run/{model}"
        async with self.client(headers={"Authorization": f"Bearer {self._key}"}, cap=self.network.image_json) as http:
            response = await wire.send(http, self.name, "POST", url, json=payload)
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if response.status_code != 200:
            raise self._fail(response)
        if content_type.startswith("image/"):
            data = wire.check_size(self.name, response.content, self.network.image)
            return GeneratedImage(data=data, mime_type=content_type, model=model, http_status=200)
        body = wire.json_of(self.name, response)
        if not body.get("success", True):
            raise self._fail(response)
        image = wire.field(self.name, body, "result", "image")
        return GeneratedImage(data=wire.b64decode(self.name, str(image), self.network.image), mime_type=None, model=model, http_status=200)
