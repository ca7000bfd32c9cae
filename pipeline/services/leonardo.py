"""Leonardo.ai REST v1: create a generation, poll it by id, download the image.

``POST {base}/generations`` (mixed casing on the wire: ``modelId``, ``num_images``) answers
``sdGenerationJob.generationId`` and ``apiCreditCost``; ``GET {base}/generations/{id}`` is polled
until ``status`` is ``COMPLETE`` or ``FAILED``. An image flagged ``nsfw: true`` is a content
block. Cost: the job's credits × the configured ``usd_per_credit``.

The generation id is reported (``request.submitted``) as soon as Leonardo accepts the job; a
request resumed after a crash (``request.resume``) polls that generation first and submits anew
only when Leonardo no longer knows it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, Submission
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import wire
from pipeline.services.remote import Remote

log = logging.getLogger("pipeline.services.leonardo")
MAX_SEED = 2_147_483_637


class LeonardoProvider(Remote, ImageProvider):
    name = "leonardo"
    label = "Leonardo.ai"
    key_env_var = "LEONARDO_API_KEY"
    base_url_env_var = "LEONARDO_BASE_URL"
    default_base_url = "https://cloud.leonardo.ai/api/rest/v1"
    model_env_var = "LEONARDO_MODEL_ID"

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"{self.base_url}/me", {"headers": {"Authorization": f"Bearer {self._key}"}}

    def _fail(self, response: httpx.Response) -> ProviderError:
        message = wire.error_text(wire.error_body(response))
        blocked = "moderat" in message.lower() or "nsfw" in message.lower() or "content polic" in message.lower()
        return wire.status_error(self.name, response, message, blocked=blocked and response.status_code in (400, 403, 422))

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        # Leonardo wants multiples of 8 within 32..1536
        width, height = (max(32, min(1536, round(v / 8) * 8)) for v in (request.width, request.height))
        payload: dict[str, Any] = {"prompt": request.prompt, "modelId": self.model, "width": width, "height": height, "num_images": 1,
                                   "seed": request.seed % MAX_SEED, **dict(self.settings.get("parameters", {}))}
        if request.negative_prompt:
            payload["negative_prompt"] = request.negative_prompt
        deadline = time.monotonic() + self.timeout_s
        headers = {"Authorization": f"Bearer {self._key}", "accept": "application/json"}
        async with self.client(headers=headers) as http:
            earlier = request.resumable(self.name)
            generation = await self._resumed(http, earlier, deadline) if earlier is not None else None
            if earlier is not None and generation is not None:
                generation_id, credits = earlier.request_id, earlier.meta.get("credits")
            else:
                created = await wire.send(http, self.name, "POST", f"{self.base_url}/generations", json=payload)
                if created.status_code != 200:
                    raise self._fail(created)
                job = wire.field(self.name, wire.json_of(self.name, created), "sdGenerationJob")
                generation_id = str(wire.field(self.name, job, "generationId"))
                credits = job.get("apiCreditCost")
                request.submitted(Submission(self.name, generation_id, {"credits": credits}))  # before waiting: a resume polls it
                generation = await self._wait(http, generation_id, deadline)
            image = wire.field(self.name, generation, "generated_images", 0)
            if image.get("nsfw"):
                raise ContentBlocked(f"{self.name} flagged the image of generation {generation_id} as NSFW", http_status=200)
            url = str(wire.field(self.name, image, "url"))
            data, content_type = await wire.download(http, self.name, url, self.network.image)
        rate = self.settings.get("usd_per_credit")
        cost = float(credits) * float(rate) if credits is not None and rate else None  # rate 0: not set, the table prices it
        return GeneratedImage(data=data, mime_type=content_type or None, model=self.model, cost_usd=cost, http_status=200,
                              request_id=generation_id, source_url=url,
                              metadata={"generation_id": generation_id, "credits": credits,
                                        **{k: v for k, v in generation.items() if k != "generated_images"}})

    async def _resumed(self, http: httpx.AsyncClient, earlier: Submission, deadline: float) -> dict[str, Any] | None:
        """The generation submitted before a crash, waited for; None when Leonardo no longer knows it."""
        log.info("%s: polling generation %s submitted before a restart instead of submitting again", self.name, earlier.request_id)
        try:
            return await self._wait(http, earlier.request_id, deadline)
        except ProviderError as e:
            if e.kind != "not_found":
                raise
        log.info("%s: generation %s submitted before a restart is gone; submitting anew", self.name, earlier.request_id)
        return None

    async def _wait(self, http: httpx.AsyncClient, generation_id: str, deadline: float) -> dict[str, Any]:
        async def finished() -> dict[str, Any] | None:
            polled = await wire.send(http, self.name, "GET", f"{self.base_url}/generations/{generation_id}")
            if polled.status_code != 200:
                raise self._fail(polled)
            generation = wire.json_of(self.name, polled).get("generations_by_pk")
            if not isinstance(generation, dict):
                raise ProviderError(f"{self.name} knows no generation {generation_id}", kind="not_found", retryable=False)
            status = generation.get("status")
            if status == "COMPLETE":
                return generation
            if status == "FAILED":
                raise ProviderError(f"{self.name}: generation {generation_id} failed", kind="server", retryable=True)
            if status != "PENDING":
                raise ProviderError(f"{self.name} sent an unknown status {status!r}", kind="malformed", retryable=True)
            return None

        return await wire.poll_until(finished, deadline=deadline, initial_s=self.poll_initial_s, max_s=self.poll_max_s, timed_out=lambda: ProviderError(
            f"{self.name}: generation {generation_id} not finished after {self.timeout_s:.0f} s", kind="timeout", retryable=True))
