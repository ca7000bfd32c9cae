"""ComfyUI emulator: POST /prompt (API graph), GET /history/{id}, GET /queue, GET /view, POST /interrupt and /queue.

``graphs`` holds the prompts queued since the server started: clearing it is a server restart
(their ids are then in neither the history nor the queue).
"""

from __future__ import annotations

import uuid

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request


class ComfyUIEmulator(Emulator):
    checkpoints = ("v1-5-pruned-emaonly.safetensors",)

    def __init__(self, polls_before_done: int = 2) -> None:
        super().__init__()
        self.polls: dict[str, int] = {}
        self.polls_before_done = polls_before_done
        self.graphs: dict[str, dict] = {}
        self.stuck = False
        self.interrupted: list[str] = []

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
        pid = str(uuid.uuid4())
        self.graphs[pid] = graph
        return Reply.json({"prompt_id": pid, "number": len(self.graphs), "node_errors": {}})
