"""Runware REST emulator: POST / with a JSON task array (imageInference), per-task data or errors."""

from __future__ import annotations

import uuid

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

KEY = "runware-test-key-0000"


class RunwareEmulator(Emulator):
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
        return Reply.json({"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"], "imageUUID": uuid.uuid4().hex,
                                     "imageURL": self.image_url(f"/im/{task['taskUUID']}.png"), "seed": task.get("seed"),
                                     "NSFWContent": False, "cost": 0.0013}]})
