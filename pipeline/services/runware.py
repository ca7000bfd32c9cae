"""Runware REST: one ``imageInference`` task in a JSON task array, ``includeCost`` on.

``POST {base}`` with ``[{"taskType": "imageInference", "taskUUID": …, …}]`` answers
``{"data": [{"taskUUID", "imageURL" | "imageBase64Data", "NSFWContent", "cost"}]}`` or
``{"errors": [{"code", "message"}]}`` (per task, so a 200 can carry errors). ``NSFWContent:
true`` or an NSFW error code is a content block; ``cost`` (USD) is the service's own figure.
A reference image goes inline as ``seedImage`` (a data URI) with ``strength``, and a mask as
``maskImage`` (inpainting); ``n`` images per call are ``numberResults``, one ``data`` item each.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from pipeline import quotas
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import references, wire
from pipeline.services.remote import Remote

_KIND_BY_CODE = {"invalidApiKey": "auth", "insufficientCredits": "auth", "unknownModel": "not_found", "modelNotFound": "not_found"}


class RunwareProvider(Remote, ImageProvider):
    name = "runware"
    label = "Runware"
    key_env_var = "RUNWARE_API_KEY"
    base_url_env_var = "RUNWARE_BASE_URL"
    default_base_url = "https://api.runware.ai/v1"
    model_env_var = "RUNWARE_MODEL"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "POST", self.base_url, {"headers": {"Authorization": f"Bearer {self._key}"},
                                       "json": [{"taskType": "authentication", "apiKey": self._key}]}

    def _task_errors(self, response: httpx.Response, errors: list[Any]) -> ProviderError:
        """Runware's per-task ``errors`` (a 200 may carry them too) as one error; NSFW refusals are blocks."""
        first = next((e for e in errors if isinstance(e, dict)), {})
        code, text = str(first.get("code", "")), wire.error_text({"errors": [first]})
        if "nsfw" in text.lower():
            return ContentBlocked(f"{self.name} refused the prompt: {text}", http_status=response.status_code)
        if response.status_code != 200:
            return wire.status_error(self.name, response, text, kind=_KIND_BY_CODE.get(code))
        return ProviderError(f"{self.name}: {text}", kind=_KIND_BY_CODE.get(code, "bad_request"), http_status=200)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        images, mask = references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        task_uuid = str(uuid.uuid4())
        width, height = (max(128, min(2048, round(v / 64) * 64)) for v in (request.width, request.height))
        task: dict[str, Any] = {
            "taskType": "imageInference", "taskUUID": task_uuid, "positivePrompt": request.prompt, "model": self.model,
            "width": width, "height": height, "seed": request.seed, "numberResults": request.n, "outputType": "URL",
            "outputFormat": str(self.settings.get("output_format", "JPG")), "includeCost": True, "checkNSFW": True,
            **dict(self.settings.get("parameters", {})),
        }
        if request.negative_prompt:
            task["negativePrompt"] = request.negative_prompt
        if images:  # image-to-image from the seed image; a mask makes it inpainting
            task.update(seedImage=references.data_uri(images[0]), strength=float(self.settings.get("image_strength", 0.6)))
            if mask is not None:
                task["maskImage"] = references.data_uri(mask)
        async with self.client(headers={"Authorization": f"Bearer {self._key}"}, cap=self.network.image_json) as http:  # may hold base64
            response = await wire.send(http, self.name, "POST", self.base_url, json=[task])
            if response.status_code != 200:
                body = wire.error_body(response)
                errors = body.get("errors") if isinstance(body, dict) else None
                raise self._task_errors(response, errors) if errors else wire.status_error(self.name, response)
            body = wire.json_of(self.name, response)
            if isinstance(body, dict) and body.get("errors"):
                raise self._task_errors(response, body["errors"])
            results = [d for d in (body.get("data") or [] if isinstance(body, dict) else []) if d.get("taskUUID") == task_uuid]
            wire.field(self.name, results, 0)  # at least one
            made = [await self._image(http, result, task_uuid) for result in results]
        made[0].extra = made[1:]
        return made[0]

    async def _image(self, http: httpx.AsyncClient, result: dict[str, Any], task_uuid: str) -> GeneratedImage:
        """One result of the task (``numberResults`` of them), its image fetched or decoded."""
        if result.get("NSFWContent"):
            raise ContentBlocked(f"{self.name} flagged the image as NSFW (NSFWContent)", http_status=200)
        url = result.get("imageURL") or result.get("imageDataURI") or result.get("imageBase64Data")
        if not url:
            raise ProviderError(f"{self.name} sent a result without an image", kind="malformed", retryable=True)
        if result.get("imageBase64Data") and not str(url).startswith(("http", "data:")):
            data, content_type = wire.b64decode(self.name, str(url), self.network.image), ""
        else:
            data, content_type = await wire.download(http, self.name, str(url), self.network.image)
        cost = result.get("cost")  # per result: each image carries its own
        quotas.board.observe_credits(self.name, cost_usd=float(cost) if isinstance(cost, (int, float)) else None)  # the Providers page
        return GeneratedImage(data=data, mime_type=content_type or None, model=self.model, http_status=200,
                              cost_usd=float(cost) if isinstance(cost, (int, float)) else None,
                              request_id=task_uuid, source_url=str(url) if str(url).startswith("http") else "",
                              metadata={"task_uuid": task_uuid, "image_uuid": result.get("imageUUID"), "seed": result.get("seed")})
