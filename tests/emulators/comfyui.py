"""ComfyUI emulator: POST /prompt (API graph), GET /history/{id}, GET /queue, GET /view, POST /interrupt and /queue,
POST /upload/image (the input folder LoadImage nodes read).

``graphs`` holds the prompts queued since the server started: clearing it is a server restart
(their ids are then in neither the history nor the queue).
"""

from __future__ import annotations

import uuid

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request, multipart


class ComfyUIEmulator(Emulator):
    checkpoints = ("v1-5-pruned-emaonly.safetensors",)

    def __init__(self, polls_before_done: int = 2) -> None:
        super().__init__()
        self.polls: dict[str, int] = {}
        self.polls_before_done = polls_before_done
        self.graphs: dict[str, dict] = {}
        self.stuck = False
        self.interrupted: list[str] = []
        self.inputs: dict[str, bytes] = {}  # the input folder: files uploaded through /upload/image
        self.uploads: list[tuple[str, bytes]] = []  # (content type, bytes) of each upload

    def upload(self, req: Request) -> Reply:
        """POST /upload/image: multipart ``image`` (the file), optional ``subfolder``, ``type`` (input|temp|output) and
        ``overwrite``; answers the stored name (renamed "name (1).png" when it exists and overwrite is off)."""
        found = multipart.parts(req)
        fields = multipart.fields(found)
        image = next((p for p in found if p.name == "image" and p.filename), None)
        if image is None or fields.get("type", "input") not in ("input", "temp", "output"):
            return Reply(400, b"")  # ComfyUI answers a bare 400
        name = image.filename or ""
        if name in self.inputs and fields.get("overwrite", "").lower() not in ("true", "1"):
            stem, dot, ext = name.rpartition(".")
            name = f"{stem} (1).{ext}" if dot else f"{name} (1)"
        subfolder = fields.get("subfolder", "")
        self.inputs[f"{subfolder}/{name}" if subfolder else name] = image.data
        self.uploads.append((image.content_type, image.data))
        return Reply.json({"name": name, "subfolder": subfolder, "type": fields.get("type", "input")})

    def validation_error(self, node: str, class_type: str, message: str, details: str) -> Reply:
        return Reply.json({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                                     "details": "", "extra_info": {}},
                           "node_errors": {node: {"errors": [{"type": "value_not_in_list", "message": message, "details": details,
                                                              "extra_info": {}}], "dependent_outputs": ["9"], "class_type": class_type}}}, 400)

    def handle(self, req: Request) -> Reply:
        path = req.path.removeprefix("/api")
        if path == "/queue" and req.method == "GET":  # what is waiting or running: [number, prompt_id, graph, extra, outputs]
            waiting = [[n, pid, {}, {}, []] for n, pid in enumerate(self.graphs, 1)
                       if pid not in self.interrupted and (self.stuck or self.polls.get(pid, 0) + 1 < self.polls_before_done)]
            return Reply.json({"queue_running": waiting[:1], "queue_pending": waiting[1:]})
        if path == "/interrupt" or path == "/queue":
            self.interrupted.append(str((req.json() or {}).get("prompt_id") or (req.json() or {}).get("delete")))
            return Reply(200, b"")
        if path == "/object_info/CheckpointLoaderSimple":
            return Reply.json({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [list(self.checkpoints), {}]}},
                                                          "output": ["MODEL", "CLIP", "VAE"], "name": "CheckpointLoaderSimple"}})
        if path == "/system_stats":
            return Reply.json({"system": {"os": "posix", "comfyui_version": "0.3.60", "python_version": "3.11"}, "devices": []})
        if path == "/view":
            if req.query.get("type") != ["output"]:
                return Reply(400, "bad type")
            return self.image_reply()
        if path.startswith("/history/"):
            pid = path.rsplit("/", 1)[1]
            if pid not in self.graphs:  # never queued here, or queued before a restart: ComfyUI has no history of it
                return Reply.json({})
            n = self.polls[pid] = self.polls.get(pid, 0) + 1
            if self.stuck or n < self.polls_before_done:
                return Reply.json({})
            if self.fault == "blocked":
                return Reply.json({pid: {"prompt": [], "outputs": {}, "status": {"status_str": "error", "completed": False, "messages": [
                    ["execution_start", {"prompt_id": pid}],
                    ["execution_error", {"prompt_id": pid, "node_id": "10", "node_type": "SafetyChecker",
                                         "exception_message": "NSFW content detected in the output", "exception_type": "ValueError"}]]}}})
            return Reply.json({pid: {"prompt": [], "outputs": {"9": {"images": [
                {"filename": f"darkroom_{pid[:8]}_00001_.png", "subfolder": "", "type": "output"}]}},
                "status": {"status_str": "success", "completed": True, "messages": []}}})
        if path == "/upload/image" and req.method == "POST":
            return self.upload(req)
        if path != "/prompt" or req.method != "POST":
            return Reply(404, "404: Not Found")
        body = req.json() or {}
        graph = body.get("prompt")
        if not isinstance(graph, dict) or not graph:
            return Reply.json({"error": {"type": "no_prompt", "message": "No prompt provided", "details": "", "extra_info": {}},
                               "node_errors": {}}, 400)
        fault = self.fault
        if fault == "400":
            return self.validation_error("5", "EmptyLatentImage", "Value smaller than min", "width: 0 < 16")
        if fault == "401":  # a ComfyUI behind an authenticating proxy
            return Reply(401, "401 Unauthorized", {"WWW-Authenticate": "Basic"})
        if fault == "429":
            return Reply(429, "Too Many Requests", {"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return Reply(500, "500 Internal Server Error")
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply(200, "<html>ComfyUI</html>", {"Content-Type": "text/html"})
        ckpt = next((n["inputs"].get("ckpt_name") for n in graph.values() if n.get("class_type") == "CheckpointLoaderSimple"), None)
        if ckpt is not None and ckpt not in self.checkpoints:
            return self.validation_error("4", "CheckpointLoaderSimple", "Value not in list", f"ckpt_name: '{ckpt}' not in {list(self.checkpoints)}")
        for node_id, node in graph.items():  # LoadImage reads a file of the input folder (validated like ComfyUI's own)
            if node.get("class_type") == "LoadImage" and node.get("inputs", {}).get("image") not in self.inputs:
                return Reply.json({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                                             "details": "", "extra_info": {}},
                                   "node_errors": {node_id: {"errors": [{"type": "custom_validation_failed", "message": "Custom validation failed for node",
                                                                         "details": f"image - Invalid image file: {node['inputs'].get('image')}",
                                                                         "extra_info": {}}], "dependent_outputs": ["9"], "class_type": "LoadImage"}}}, 400)
        pid = str(uuid.uuid4())
        self.graphs[pid] = graph
        return Reply.json({"prompt_id": pid, "number": len(self.graphs), "node_errors": {}})
