"""Runware REST emulator: POST / with a JSON task array (imageInference), per-task data or errors."""

from __future__ import annotations

import base64
import io
import re
import uuid

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

KEY = "runware-test-key-0000"


class RunwareEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.received_images: list[dict[str, tuple[str, bytes]]] = []  # per task: seedImage / maskImage -> (MIME type, bytes)

    def errors(self, status: int, code: str, message: str, task: dict | None = None, **headers: str) -> Reply:
        entry = {"code": code, "message": message, "taskType": (task or {}).get("taskType", "imageInference"),
                 "taskUUID": (task or {}).get("taskUUID", "")}
        return Reply.json({"errors": [entry]}, status, **headers)

    def handle(self, req: Request) -> Reply:
        if req.path.startswith("/im/"):
            return self.image_reply()
        if req.path != "/v1":
            return Reply.json({"errors": [{"code": "notFound", "message": "unknown path"}]}, 404)
        if self.fault == "echo_key":
            return self.errors(401, "invalidApiKey", f"Invalid API key: {self.credential(req)}")
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return self.errors(401, "invalidApiKey", "Invalid API key.")
        tasks = req.json()
        if not isinstance(tasks, list) or not tasks:
            return self.errors(400, "invalidPayload", "The request body must be an array of tasks.")
        task = tasks[0]
        if task.get("taskType") == "authentication":
            if task.get("apiKey") != KEY:
                return self.errors(401, "invalidApiKey", "Invalid API key.", task)
            return Reply.json({"data": [{"taskType": "authentication", "connectionSessionUUID": uuid.uuid4().hex}]})
        fault = self.fault
        if fault == "400":
            return self.errors(400, "invalidWidth", "Width must be a multiple of 64 between 128 and 2048.", task)
        if fault == "401":
            return self.errors(401, "invalidApiKey", "Invalid API key.", task)
        if fault == "429":
            return self.errors(429, "queueCapacityExceeded", "Too many queued tasks, retry later.", task,
                               **{"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return self.errors(500, "internalError", "Unexpected error.", task)
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply.json({"data": [{"taskType": "imageInference", "taskUUID": "someone-else"}]})
        if fault == "blocked":
            return Reply.json({"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"], "imageUUID": uuid.uuid4().hex,
                                         "imageURL": f"{self.url}/im/x.png", "NSFWContent": True, "cost": 0.0013}]})
        refused = self.check_images(task)
        if refused is not None:
            return refused
        count = int(task.get("numberResults") or 1)
        if not 1 <= count <= 20:
            return self.errors(400, "invalidNumberResults", "numberResults must be between 1 and 20.", task)
        return Reply.json({"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"], "imageUUID": uuid.uuid4().hex,
                                     "imageURL": self.image_url(f"/im/{task['taskUUID']}-{i}.png"), "seed": task.get("seed"),
                                     "NSFWContent": False, "cost": 0.0013} for i in range(count)]})

    def check_images(self, task: dict) -> Reply | None:
        """``seedImage`` / ``maskImage`` as Runware reads them: an uploaded image's UUID, a URL, a data URI or
        plain base64 of an image; a mask needs a seed image; ``strength`` within 0..1."""
        if "maskImage" in task and "seedImage" not in task:
            return self.errors(400, "missingSeedImage", "'maskImage' requires 'seedImage' (inpainting).", task)
        if "seedImage" in task and not 0 <= float(task.get("strength", 0.8)) <= 1:
            return self.errors(400, "invalidStrength", "Invalid value for 'strength' parameter. Must be between 0 and 1.", task)
        received = {}
        for key in ("seedImage", "maskImage"):
            value = task.get(key)
            if value is None:
                continue
            m = re.fullmatch(r"data:(?P<mime>image/[\w.+-]+);base64,(?P<data>.+)", str(value), re.S)
            if m is None and (re.fullmatch(r"[0-9a-f-]{36}", str(value)) or str(value).startswith("http")):
                received[key] = ("ref", str(value).encode())
                continue
            try:
                data = base64.b64decode(m["data"] if m else str(value), validate=True)
                fmt = str(Image.open(io.BytesIO(data)).format).lower()
            except (ValueError, OSError):
                return self.errors(400, f"invalid{key[0].upper()}{key[1:]}", f"Invalid value for '{key}' parameter. It must be an image "
                                   "UUID, a URL, a data URI or base64 image data.", task)
            received[key] = (m["mime"] if m else f"image/{fmt}", data)
        if received:
            self.received_images.append(received)
        return None
