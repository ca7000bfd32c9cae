"""A local ComfyUI server: POST /prompt with an API-format workflow, poll /history, GET /view.

The workflow is the shipped txt2img graph (``workflows/comfyui_txt2img.json``) or the user's own
file (``COMFYUI_WORKFLOW``, exported with "Save (API format)"). String values that are exactly
a placeholder are replaced with typed values: ``{{prompt}}``, ``{{negative_prompt}}``,
``{{seed}}``, ``{{width}}``, ``{{height}}``, ``{{checkpoint}}``, ``{{steps}}``, ``{{cfg}}``. A prompt
still running at the timeout is interrupted and removed from the queue.

A prompt with a reference image uses the img2img graph (``workflows/comfyui_img2img.json`` or
``img2img_workflow``): the image is uploaded first (``POST /upload/image``, multipart ``image``,
``type=input``) and its stored name fills ``{{image}}`` (a LoadImage node); ``{{denoise}}`` is
``image_strength``.

The prompt id is reported (``request.submitted``) as soon as the server queues it; a request
resumed after a crash (``request.resume``) waits for that prompt when the server still has it
(in ``/history`` or ``/queue``) and queues it anew otherwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from pipeline.components import GeneratedImage, GenerationRequest, ImageProvider, ReferenceImage, Submission
from pipeline.errors import ConfigError, ContentBlocked, ProviderError
from pipeline.services import references, wire
from pipeline.services.remote import Remote

log = logging.getLogger("pipeline.services.comfyui")
DEFAULT_WORKFLOW = Path(__file__).parent / "workflows" / "comfyui_txt2img.json"
DEFAULT_IMG2IMG_WORKFLOW = Path(__file__).parent / "workflows" / "comfyui_img2img.json"


def fill(node: Any, values: dict[str, Any]) -> Any:
    """The workflow with every ``"{{name}}"`` string replaced by ``values[name]`` (keeping its type)."""
    if isinstance(node, dict):
        return {k: fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, values) for v in node]
    if isinstance(node, str) and node.startswith("{{") and node.endswith("}}") and node[2:-2] in values:
        return values[node[2:-2]]
    return node


class ComfyUIProvider(Remote, ImageProvider):
    name = "comfyui"
    label = "ComfyUI (local server)"
    key_env_var = None
    base_url_env_var = "COMFYUI_URL"
    default_base_url = "http://127.0.0.1:8188"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.workflow = self._workflow(wire.setting("COMFYUI_WORKFLOW", self.settings, "workflow", str(DEFAULT_WORKFLOW)), "prompt")
        self.img2img = self._workflow(str(self.settings.get("img2img_workflow") or DEFAULT_IMG2IMG_WORKFLOW), "image")
        self.checkpoint = wire.setting("COMFYUI_CHECKPOINT", self.settings, "checkpoint")
        self.model = self.checkpoint or "comfyui"

    @staticmethod
    def _workflow(where: str, placeholder: str) -> dict[str, Any]:
        path = Path(where).expanduser()
        try:
            workflow = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"comfyui: cannot read the workflow {path}: {e}") from None
        needed = ["prompt"] if placeholder == "prompt" else ["prompt", placeholder]
        if not isinstance(workflow, dict) or any(f'"{{{{{p}}}}}"' not in json.dumps(workflow) for p in needed):
            wanted = " and ".join(f'"{{{{{p}}}}}"' for p in needed)
            raise ConfigError(f"comfyui: the workflow {path} must be API format with {wanted} placeholder(s)")
        return workflow

    def probe_request(self) -> tuple[str, str, dict[str, Any]]:
        return "GET", f"{self.base_url}/object_info/CheckpointLoaderSimple", {}  # answers with the checkpoints it can load

    def model_missing(self, response: httpx.Response) -> str | None:
        """Whether the checkpoint the workflow loads is one the server has."""
        if not self.checkpoint or "{{checkpoint}}" not in json.dumps(self.workflow):
            return None
        try:
            options = response.json()["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return None
        if not isinstance(options, list) or self.checkpoint in options:
            return None
        return (f"the checkpoint {self.checkpoint!r} is not on this server (it has: {', '.join(map(str, options)) or 'none'}); "
                "set COMFYUI_CHECKPOINT or [providers.comfyui] checkpoint")

    def _fail(self, response: httpx.Response) -> ProviderError:
        body = wire.error_body(response)
        message = wire.error_text(body)
        node_errors = body.get("node_errors") if isinstance(body, dict) else None
        for node_id, problem in node_errors.items() if isinstance(node_errors, dict) else []:
            if isinstance(problem, dict):
                details = "; ".join(f"{e.get('message', '')}: {e.get('details', '')}" for e in problem.get("errors", []) if isinstance(e, dict))
                message += f" [node {node_id} {problem.get('class_type', '')}: {details}]"
        return wire.status_error(self.name, response, message)

    async def generate(self, request: GenerationRequest) -> GeneratedImage:
        images, _ = references.check(self.name, self.model, request, references.capabilities(self.name, self.settings, self.model))
        values = {"prompt": request.prompt, "negative_prompt": request.negative_prompt, "seed": request.seed,
                  "width": request.width, "height": request.height, "checkpoint": self.checkpoint,
                  "steps": int(self.settings.get("steps", 20)), "cfg": float(self.settings.get("cfg", 7.0)),
                  "denoise": float(self.settings.get("image_strength", 0.6))}
        deadline = time.monotonic() + self.timeout_s
        async with self.client() as http:
            earlier = request.resumable(self.name)
            if earlier is not None and await self._still_there(http, earlier.request_id):
                prompt_id = earlier.request_id
            else:
                if images:  # img2img: the reference goes to the server's input folder, and LoadImage names it
                    values["image"] = await self._upload(http, images[0])
                graph = fill(self.img2img if images else self.workflow, values)
                queued = await wire.send(http, self.name, "POST", f"{self.base_url}/prompt", json={"prompt": graph, "client_id": str(uuid.uuid4())})
                if queued.status_code != 200:
                    raise self._fail(queued)
                prompt_id = str(wire.field(self.name, wire.json_of(self.name, queued), "prompt_id"))
                request.submitted(Submission(self.name, prompt_id))  # before waiting: a resume polls it
            try:
                entry = await self._wait(http, prompt_id, deadline)
            except ProviderError as e:
                if e.kind == "timeout":
                    await self._abandon(http, prompt_id)
                raise
            images = [img for out in (entry.get("outputs") or {}).values() for img in (out.get("images") or []) if img.get("type") == "output"]
            image = wire.field(self.name, images, 0)
            view = httpx.URL(f"{self.base_url}/view", params={"filename": image.get("filename", ""), "subfolder": image.get("subfolder", ""),
                                                             "type": "output"})
            viewed = await wire.send(http, self.name, "GET", str(view), extensions=self.network.image.extension())
            if viewed.status_code != 200:
                raise self._fail(viewed)
        return GeneratedImage(data=viewed.content, mime_type=viewed.headers.get("content-type", "").split(";")[0] or None,
                              model=self.model, cost_usd=0.0, http_status=200, request_id=prompt_id, source_url=str(view),
                              metadata={"prompt_id": prompt_id, "outputs": entry.get("outputs"), "status": entry.get("status")})

    async def _upload(self, http: httpx.AsyncClient, ref: ReferenceImage) -> str:
        """``POST /upload/image`` (multipart ``image``, ``type=input``): the name LoadImage reads it by.
        The file is named by its content, so the same reference is stored once however often it is sent."""
        name = f"darkroom_{hashlib.sha256(ref.data).hexdigest()[:20]}.{references.EXTENSIONS.get(references.mime_of(ref), 'png')}"
        uploaded = await wire.send(http, self.name, "POST", f"{self.base_url}/upload/image",
                                   files={"image": (name, ref.data, references.mime_of(ref))}, data={"type": "input", "overwrite": "true"})
        if uploaded.status_code != 200:
            raise self._fail(uploaded)
        stored = wire.json_of(self.name, uploaded)
        stored_name, subfolder = str(wire.field(self.name, stored, "name")), str(stored.get("subfolder") or "")
        return f"{subfolder}/{stored_name}" if subfolder else stored_name

    async def _still_there(self, http: httpx.AsyncClient, prompt_id: str) -> bool:
        """Whether the server still has a prompt queued before a crash: in its history (done) or
        its queue (waiting or running). A restarted ComfyUI has forgotten it: submit anew."""
        history = await wire.send(http, self.name, "GET", f"{self.base_url}/history/{prompt_id}")
        if history.status_code != 200:
            raise self._fail(history)
        if isinstance(wire.json_of(self.name, history).get(prompt_id), dict):
            found = True
        else:
            queue = await wire.send(http, self.name, "GET", f"{self.base_url}/queue")
            if queue.status_code != 200:
                raise self._fail(queue)
            listed = wire.json_of(self.name, queue)
            jobs = [*(listed.get("queue_running") or []), *(listed.get("queue_pending") or [])] if isinstance(listed, dict) else []
            found = any(isinstance(job, list) and len(job) > 1 and job[1] == prompt_id for job in jobs)
        log.info("%s: prompt %s queued before a restart %s", self.name, prompt_id,
                 "is still there: waiting for it instead of queueing it again" if found else "is gone; queueing it anew")
        return found

    async def _wait(self, http: httpx.AsyncClient, prompt_id: str, deadline: float) -> dict[str, Any]:
        history = wire.Repeat(http, self.name, f"{self.base_url}/history/{prompt_id}")

        async def finished() -> dict[str, Any] | None:
            polled = await history.send()
            if polled.status_code != 200:
                raise self._fail(polled)
            entry = wire.json_of(self.name, polled).get(prompt_id)
            if not isinstance(entry, dict):
                return None  # {} until the prompt has run
            status = entry.get("status") or {}
            if status.get("status_str") == "error":
                detail: dict[str, Any] = next((m[1] for m in status.get("messages", []) if m and m[0] == "execution_error"), {})
                text = f"{detail.get('node_type', '')}: {detail.get('exception_message', 'execution error')}".strip(": ")
                if any(w in text.lower() for w in ("nsfw", "safety", "content policy")):
                    raise ContentBlocked(f"{self.name} workflow refused the image: {text}", http_status=200)
                raise ProviderError(f"{self.name} workflow failed: {text}", kind="server", retryable=False)
            return entry if status.get("completed") or entry.get("outputs") else None

        return await self.poll(finished, deadline=deadline, timed_out=lambda: ProviderError(
            f"{self.name}: prompt {prompt_id} not finished after {self.timeout_s:.0f} s; interrupted", kind="timeout", retryable=True))

    async def _abandon(self, http: httpx.AsyncClient, prompt_id: str) -> None:
        for path, body in (("/interrupt", {"prompt_id": prompt_id}), ("/queue", {"delete": [prompt_id]})):
            try:
                await http.post(f"{self.base_url}{path}", json=body, timeout=5.0)
            except (httpx.HTTPError, ProviderError):
                pass
