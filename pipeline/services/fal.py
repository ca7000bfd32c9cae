"""fal.ai through its queue API: submit, follow the status, fetch the result, download.

The status is followed on ``GET {status_url}/stream`` (server-sent events, as fal_client does),
so a finished image is fetched the moment it is ready; where no stream is offered (404/405, or
``status_stream = false``) the status is polled with backoff instead.

Wire format (docs.fal.ai, fal_client): ``POST {base}/{model}`` returns ``request_id`` and the
``status_url`` / ``response_url`` / ``cancel_url`` to use verbatim; status is ``IN_QUEUE`` →
``IN_PROGRESS`` → ``COMPLETED``; the result holds ``images[].url`` and ``has_nsfw_concepts``.
A request that runs past ``timeout_s`` is cancelled (``PUT cancel_url``) so it is not billed
further. Content filters answer 422 with a ``detail[]`` list, or 200 with ``has_nsfw_concepts``.

The request id and its URLs are reported (``request.submitted``) as soon as fal accepts the job;
a request resumed after a crash (``request.resume``) polls that job first and submits anew only
when fal no longer knows it.

A request with reference images goes to ``edit_model`` (FLUX.1 Kontext) unless the configured
model takes references itself; the image goes inline as ``image_url`` (a data URI, which fal
accepts for any file input). ``n`` images per call are asked as ``num_images``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, Submission, service_done
from pipeline.errors import ContentBlocked, ProviderError
from pipeline.services import references, wire
from pipeline.services.remote import Remote

log = logging.getLogger("pipeline.services.fal")
STREAM_DRAIN_S = 0.25  # how long the end of a finished status stream is waited for (connection reuse)
_BLOCK_WORDS = ("content_policy", "nsfw", "safety", "unsafe", "content policy")


async def _drain(rest: AsyncIterator[str]) -> None:
    """Read the end of a finished status stream (fal closes it after COMPLETED), for a moment at
    most: a stream read to its end gives its connection back to the pool for the next call."""
    try:
        async with asyncio.timeout(STREAM_DRAIN_S):
            async for _ in rest:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the connection is closed instead


class FalProvider(Remote, ImageProvider):
    name = "fal"
    label = "fal.ai queue API"
    key_env_var = "FAL_KEY"
    base_url_env_var = "FAL_BASE_URL"
    default_base_url = "https://queue.fal.run"
    model_env_var = "FAL_MODEL"
    _no_stream = False  # set once the service answered that it has no status stream

    def _fail(self, response: httpx.Response) -> ProviderError:
        text = wire.error_text(wire.error_body(response))  # fal's ``detail``: a string, or a list of {msg, type}
        blocked = any(w in text.lower() for w in _BLOCK_WORDS)
        hint = response.headers.get("x-fal-retryable")
        retryable = None if hint is None else hint.lower() == "true"
        return wire.status_error(self.name, response, text, blocked=blocked and response.status_code in (400, 422), retryable=retryable)

    probe_ok = frozenset({200, 202, 400, 404, 422})  # asked about a request id that does not exist

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        app = "/".join(self.model.split("/")[:2])
        return "GET", f"{self.base_url}/{app}/requests/00000000-0000-0000-0000-000000000000/status", {
            "headers": {"Authorization": f"Key {self._key}"}}

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        model = references.model_for(self.name, self.settings, self.model, request)  # an edit model when there are references
        images, _ = references.check(self.name, model, request, references.capabilities(self.name, self.settings, model))
        payload: dict[str, Any] = {
            "prompt": request.prompt, "image_size": {"width": request.width, "height": request.height}, "seed": request.seed,
            "num_images": request.n, "enable_safety_checker": True, "output_format": str(self.settings.get("output_format", "jpeg")),
            **dict(self.settings.get("parameters", {})),
        }
        if images:  # Kontext-style edit models: the image to follow as image_url, inline as a data URI
            payload["image_url"] = references.data_uri(images[0])
        if request.negative_prompt and self.settings.get("negative_prompt", False):
            payload["negative_prompt"] = request.negative_prompt
        deadline = time.monotonic() + self.timeout_s
        async with self.client(headers={"Authorization": f"Key {self._key}"}) as http:
            earlier = request.resumable(self.name)
            if earlier is not None and await self._still_there(http, earlier, model):
                return await self._collect(http, earlier.request_id, self._urls(earlier.request_id, earlier.meta, model), deadline, model)
            submitted = await wire.send(http, self.name, "POST", f"{self.base_url}/{model}", json=payload)
            if submitted.status_code != 200:
                self.ahead.refused(submitted.status_code)
                raise self._fail(submitted)
            ticket = wire.json_of(self.name, submitted)
            self.ahead.accepted(ticket)  # its queue_position: whether to keep submitting ahead
            request_id = str(wire.field(self.name, ticket, "request_id"))
            urls = self._urls(request_id, ticket, model)
            request.submitted(Submission(self.name, request_id, urls))  # recorded before waiting: a resume polls it
            return await self._collect(http, request_id, urls, deadline, model)

    def _urls(self, request_id: str, given: Any, model: str) -> dict[str, str]:
        """The job's status, result and cancel URLs: as fal gave them, else built from the id."""
        given = given if isinstance(given, dict) else {}
        app = "/".join(model.split("/")[:2])  # status/result URLs drop the model's subpath
        base = f"{self.base_url}/{app}/requests/{request_id}"
        return {"status_url": str(given.get("status_url") or f"{base}/status"), "response_url": str(given.get("response_url") or base),
                "cancel_url": str(given.get("cancel_url") or f"{base}/cancel")}

    async def _still_there(self, http: httpx.AsyncClient, earlier: Submission, model: str) -> bool:
        """Whether fal still has a job submitted before a crash (an unknown or expired id answers 4xx)."""
        polled = await wire.send(http, self.name, "GET", self._urls(earlier.request_id, earlier.meta, model)["status_url"])
        if polled.status_code in (400, 404, 410, 422):
            log.info("%s: request %s submitted before a restart is gone (HTTP %d); submitting anew",
                     self.name, earlier.request_id, polled.status_code)
            return False
        if polled.status_code not in (200, 202):
            raise self._fail(polled)
        log.info("%s: polling request %s submitted before a restart instead of submitting again", self.name, earlier.request_id)
        return True

    async def _collect(self, http: httpx.AsyncClient, request_id: str, urls: dict[str, str], deadline: float,
                       model: str) -> GeneratedImage:
        """Wait for a submitted job, fetch its result and download its images (``num_images`` of them)."""
        status_url, response_url, cancel_url = urls["status_url"], urls["response_url"], urls["cancel_url"]
        try:
            await self._wait(http, status_url, deadline, request_id)
        except ProviderError as e:
            if e.kind == "timeout":
                await self._cancel(http, cancel_url)
            raise
        result = await wire.send(http, self.name, "GET", response_url, extensions=self.network.image_json.extension())  # may hold data: URIs
        if result.status_code != 200:
            raise self._fail(result)
        output = wire.json_of(self.name, result)
        nsfw = output.get("has_nsfw_concepts") if isinstance(output, dict) else None
        if isinstance(nsfw, list) and any(nsfw) or nsfw is True:
            raise ContentBlocked(f"{self.name} flagged the image as NSFW (has_nsfw_concepts) for request {request_id}", http_status=200)
        wire.field(self.name, output, "images", 0)  # at least one
        made = []
        for i, image in enumerate(output["images"]):
            url = str(wire.field(self.name, image, "url"))
            data, content_type = await wire.download(http, self.name, url, self.network.image)
            meta = {"request_id": request_id, **{k: v for k, v in output.items() if k != "images"}}
            made.append(GeneratedImage(data=data, mime_type=image.get("content_type") or content_type or None, model=model,
                                       http_status=200, request_id=request_id, source_url=url,
                                       metadata={**meta, "index": i} if len(output["images"]) > 1 else meta))
        made[0].extra = made[1:]
        return made[0]

    async def _wait(self, http: httpx.AsyncClient, status_url: str, deadline: float, request_id: str) -> None:
        """Until the request is done: from the status stream when the service offers one (no
        polling delay between the result being ready and us knowing), else by polling."""
        if self.settings.get("status_stream", True) and not self._no_stream:
            if await self._stream(http, status_url, deadline, request_id):
                service_done()  # the job is done there: the next may be submitted while its result is fetched
                return
        await self._poll(http, status_url, deadline, request_id)

    def _completed(self, status: Any, request_id: str) -> bool:
        state = wire.field(self.name, status, "status")
        if state == "COMPLETED":
            if status.get("error"):
                raise ProviderError(f"{self.name}: request {request_id} failed: {status['error']} ({status.get('error_type') or 'error'})",
                                    kind="server", retryable=True)
            return True
        if state not in ("IN_QUEUE", "IN_PROGRESS"):
            raise ProviderError(f"{self.name} sent an unknown status {state!r}", kind="malformed", retryable=True)
        return False

    async def _stream(self, http: httpx.AsyncClient, status_url: str, deadline: float, request_id: str) -> bool:
        """Read ``GET {status_url}/stream`` (server-sent events) to COMPLETED. False when there is
        no stream to read (the service or a proxy does not offer it): the caller polls instead."""
        timeout = httpx.Timeout(max(0.1, deadline - time.monotonic()), connect=min(10.0, self.timeout_s))
        try:
            async with http.stream("GET", f"{status_url}/stream", timeout=timeout) as response:
                if response.status_code != 200 or not response.headers.get("content-type", "").startswith("text/event-stream"):
                    await response.aread()
                    if response.status_code in (404, 405, 406) or response.status_code == 200:
                        self._no_stream = True  # not offered here: poll from now on
                        return False
                    raise self._fail(response)
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("data:"):
                        try:
                            status = json.loads(line[5:])
                        except json.JSONDecodeError:
                            raise ProviderError(f"{self.name} sent a status event that is not JSON", kind="malformed", retryable=True) from None
                        if self._completed(status, request_id):
                            await _drain(lines)
                            return True
        except httpx.TimeoutException:
            raise ProviderError(f"{self.name}: request {request_id} not finished after {self.timeout_s:.0f} s; cancelled",
                                kind="timeout", retryable=True) from None
        except httpx.HTTPError as e:
            raise wire.transport_error(self.name, e) from None
        return False  # the stream ended early: poll for the rest

    async def _poll(self, http: httpx.AsyncClient, status_url: str, deadline: float, request_id: str) -> None:
        status = wire.Repeat(http, self.name, status_url)  # built once, sent each poll

        async def completed() -> bool | None:
            polled = await status.send()
            if polled.status_code not in (200, 202):
                raise self._fail(polled)
            return self._completed(wire.json_of(self.name, polled), request_id) or None

        await self.poll(completed, deadline=deadline, timed_out=lambda: ProviderError(
            f"{self.name}: request {request_id} not finished after {self.timeout_s:.0f} s; cancelled", kind="timeout", retryable=True))

    async def _cancel(self, http: httpx.AsyncClient, cancel_url: str) -> None:
        try:
            await http.put(cancel_url, timeout=5.0)
        except (httpx.HTTPError, ProviderError):  # ProviderError: the guard refused a cancel URL on another host
            pass  # best effort: the timeout is what gets reported
