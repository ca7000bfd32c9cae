"""Leonardo.ai REST v1: create a generation, poll it by id, download the image.

``POST {base}/generations`` (mixed casing on the wire: ``modelId``, ``num_images``) answers
``sdGenerationJob.generationId`` and ``apiCreditCost``; ``GET {base}/generations/{id}`` is polled
until ``status`` is ``COMPLETE`` or ``FAILED``. An image flagged ``nsfw: true`` is a content
block. Cost: the job's credits × the configured ``usd_per_credit``.

The generation id is reported (``request.submitted``) as soon as Leonardo accepts the job; a
request resumed after a crash (``request.resume``) polls that generation first and submits anew
only when Leonardo no longer knows it.

A reference image is an init image: ``POST {base}/init-image`` with its extension answers a
presigned upload (``uploadInitImage``: id, url, fields); the file is POSTed there as multipart
without our key, and the generation names it (``init_image_id``, ``init_strength``). ``n``
images per call are asked as ``num_images``; a job's credits are split over its images.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx

from pipeline import quotas
from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, ReferenceImage, Submission
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import references, wire
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
        images, _ = references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        # Leonardo wants multiples of 8 within 32..1536
        width, height = (max(32, min(1536, round(v / 8) * 8)) for v in (request.width, request.height))
        payload: dict[str, Any] = {"prompt": request.prompt, "modelId": self.model, "width": width, "height": height,
                                   "num_images": request.n, "seed": request.seed % MAX_SEED, **dict(self.settings.get("parameters", {}))}
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
                if images:  # the init image: uploaded first, then named by its id
                    payload["init_image_id"] = await self._upload_init_image(http, images[0])
                    payload["init_strength"] = round(min(0.9, max(0.1, 1 - float(self.settings.get("image_strength", 0.5)))), 2)
                created = await wire.send(http, self.name, "POST", f"{self.base_url}/generations", json=payload)
                if created.status_code != 200:
                    raise self._fail(created)
                job = wire.field(self.name, wire.json_of(self.name, created), "sdGenerationJob")
                generation_id = str(wire.field(self.name, job, "generationId"))
                credits = job.get("apiCreditCost")
                quotas.board.observe_credits(self.name, credits=float(credits) if isinstance(credits, (int, float)) else None)
                request.submitted(Submission(self.name, generation_id, {"credits": credits}))  # before waiting: a resume polls it
                generation = await self._wait(http, generation_id, deadline)
            wire.field(self.name, generation, "generated_images", 0)  # at least one
            downloaded = []
            for image in generation["generated_images"]:
                if image.get("nsfw"):
                    raise ContentBlocked(f"{self.name} flagged the image of generation {generation_id} as NSFW", http_status=200)
                url = str(wire.field(self.name, image, "url"))
                downloaded.append((url, *await wire.download(http, self.name, url, self.network.image)))
        rate = self.settings.get("usd_per_credit")
        cost = float(credits) * float(rate) if credits is not None and rate else None  # rate 0: not set, the table prices it
        meta = {"generation_id": generation_id, "credits": credits, **{k: v for k, v in generation.items() if k != "generated_images"}}
        made = [GeneratedImage(data=data, mime_type=content_type or None, model=self.model, cost_usd=references.shares(cost, len(downloaded)),
                               http_status=200, request_id=generation_id, source_url=url,
                               metadata={**meta, "index": i} if len(downloaded) > 1 else meta)
                for i, (url, data, content_type) in enumerate(downloaded)]
        made[0].extra = made[1:]
        return made[0]

    async def _upload_init_image(self, http: httpx.AsyncClient, ref: ReferenceImage) -> str:
        """Leonardo's presigned upload: ``POST /init-image {extension}`` answers an id, a URL and form
        fields; the file goes to that URL as multipart (every field, then ``file``) without our key."""
        extension = references.EXTENSIONS.get(references.mime_of(ref), "png")
        asked = await wire.send(http, self.name, "POST", f"{self.base_url}/init-image", json={"extension": extension})
        if asked.status_code != 200:
            raise self._fail(asked)
        upload = wire.field(self.name, wire.json_of(self.name, asked), "uploadInitImage")
        image_id, url, fields = (wire.field(self.name, upload, key) for key in ("id", "url", "fields"))
        try:
            form = json.loads(fields) if isinstance(fields, str) else fields
        except json.JSONDecodeError:
            form = None
        if not isinstance(form, dict):
            raise ProviderError(f"{self.name} sent upload fields that are not a JSON object", kind="malformed", retryable=True)
        storage = wire.Guard(self.name, self.network.json)  # another host (S3): no credentials go with it
        async with wire.client(timeout_s=self.timeout_s, guard=storage) as s3:
            stored = await wire.send(s3, self.name, "POST", str(url), data={k: str(v) for k, v in form.items()},
                                     files={"file": (references.filename(ref, 1), ref.data, references.mime_of(ref))})
        if stored.status_code not in (200, 201, 204):
            raise wire.status_error(self.name, stored, f"the init image upload was refused: {wire.safe_url(str(url))} answered "
                                                       f"{stored.text[:200]!r}")
        return str(image_id)

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
        status_request = wire.Repeat(http, self.name, f"{self.base_url}/generations/{generation_id}")

        async def finished() -> dict[str, Any] | None:
            polled = await status_request.send()
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

        return await self.poll(finished, deadline=deadline, timed_out=lambda: ProviderError(
            f"{self.name}: generation {generation_id} not finished after {self.timeout_s:.0f} s", kind="timeout", retryable=True))
