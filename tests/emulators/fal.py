"""fal.ai queue API emulator (docs.fal.ai queue endpoints; status bodies as fal_client parses them)."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

KEY = "fal-test-key-0000"


class FalEmulator(Emulator):
    def __init__(self, key: str = KEY, polls_before_done: int = 2) -> None:
        super().__init__()
        self.key = key
        self.polls_before_done = polls_before_done
        self.polls: dict[str, int] = {}
        self.cancelled: list[str] = []
        self.stuck = False  # never finishes (for the cancel-on-timeout test)
        self.streams = True  # offers GET …/status/stream (server-sent events); False answers 404 there
        self.jobs: dict[str, dict] = {}  # request id -> the input it was submitted with
        self.received_images: list[tuple[str, bytes]] = []  # (MIME type, bytes) of each image_url data URI

    def check_image_url(self, url: object) -> Reply | None:
        """fal's file inputs take a URL or a ``data:<mime>;base64,`` URI; an image that cannot be loaded is a 422."""
        def bad(msg: str, type_: str) -> Reply:
            return self.error(422, [{"loc": ["body", "image_url"], "msg": msg, "type": type_}])
        if not isinstance(url, str) or not url:
            return bad("field required", "missing")
        m = re.fullmatch(r"data:(?P<mime>image/[\w.+-]+);base64,(?P<data>[A-Za-z0-9+/=]+)", url)
        if url.startswith("data:") and not m:
            return bad("Invalid data URI", "invalid_data_uri")
        if m:
            try:
                data = base64.b64decode(m["data"], validate=True)
                Image.open(io.BytesIO(data)).verify()
            except (ValueError, OSError):
                return bad("Failed to load the image from the data URI", "image_load_error")
            self.received_images.append((m["mime"], data))
        elif not url.startswith(("http://", "https://")):
            return bad("image_url must be a URL or a data URI", "invalid_url")
        return None

    def error(self, status: int, detail: object, error_type: str = "", **headers: str) -> Reply:
        body = {"detail": detail}
        if error_type:
            body["error_type"] = error_type
            headers["X-Fal-Error-Type"] = error_type
        return Reply.json(body, status, **headers)

    def handle(self, req: Request) -> Reply:
        if self.fault == "echo_key":
            return self.error(401, f"Invalid API key: {self.credential(req)!r} is not a valid fal key")
        if req.headers.get("authorization") != f"Key {self.key}":
            return self.error(401, "Invalid API key")
        if req.path.startswith("/files/"):
            return self.image_reply()
        m = re.fullmatch(r"/(?P<app>[^/]+/[^/]+)/requests/(?P<rid>[^/]+)(?P<rest>/status/stream|/status|/cancel)?", req.path)
        if m and m["rest"] == "/status/stream":
            if not self.streams:
                return Reply.json({"detail": "Not found"}, 404)
            events = [{"status": "IN_QUEUE", "queue_position": 0}, {"status": "IN_PROGRESS", "logs": None}]
            if self.stuck:
                return Reply(200, "".join(f"data: {json.dumps(e)}\n\n" for e in events), {"Content-Type": "text/event-stream"}, delay=SLOW_S)
            events.append({"status": "COMPLETED", "logs": None, "response_url": f"{self.url}/{m['app']}/requests/{m['rid']}"})
            return Reply(200, "".join(f"data: {json.dumps(e)}\n\n" for e in events), {"Content-Type": "text/event-stream"})
        if m and req.method == "PUT" and m["rest"] == "/cancel":
            self.cancelled.append(m["rid"])
            return Reply.json({"status": "CANCELLATION_REQUESTED"}, 202)
        if m and m["rest"] == "/status":
            n = self.polls[m["rid"]] = self.polls.get(m["rid"], 0) + 1
            if self.stuck or n < self.polls_before_done:
                return Reply.json({"status": "IN_PROGRESS" if n > 1 else "IN_QUEUE", "queue_position": 0, "logs": None,
                                   "response_url": f"{self.url}/{m['app']}/requests/{m['rid']}"}, 202)
            return Reply.json({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 0.4},
                               "response_url": f"{self.url}/{m['app']}/requests/{m['rid']}"})
        if m and req.method == "GET":
            nsfw = self.fault == "blocked_200"
            content_type = "image/jpeg" if self.fault == "truncated_jpeg" else "image/png"  # what the file will be
            count = int(self.jobs.get(m["rid"], {}).get("num_images") or 1)
            return Reply.json({"images": [{"url": self.image_url(f"/files/{m['rid']}-{i}.png"), "width": 64, "height": 48,
                                           "content_type": content_type} for i in range(count)],
                               "timings": {"inference": 0.4}, "seed": 42, "has_nsfw_concepts": [nsfw] * count, "prompt": "…"})
        if req.method == "POST":  # submit: /{owner}/{alias}[/{subpath}]
            body = req.json()
            if not isinstance(body, dict) or not body.get("prompt"):
                return self.error(422, [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}])
            if not 1 <= int(body.get("num_images") or 1) <= 4:
                return self.error(422, [{"loc": ["body", "num_images"], "msg": "ensure this value is less than or equal to 4",
                                         "type": "value_error.number.not_le"}])
            if "/kontext" in req.path:  # an edit model: the image to edit is required, a URL or a data URI
                refused = self.check_image_url(body.get("image_url"))
                if refused is not None:
                    return refused
            fault = self.fault
            if fault == "400":
                return self.error(400, "Bad request: image_size is invalid", "bad_request")
            if fault == "401":
                return self.error(401, "Invalid API key")
            if fault == "429":
                return self.error(429, "Too many concurrent requests", **{"Retry-After": str(RETRY_AFTER_S)})
            if fault == "500":
                return self.error(500, "Internal server error", "internal_error")
            if fault == "timeout":
                return Reply(200, {}, delay=SLOW_S)
            if fault == "malformed":
                return Reply(200, "<html>upstream gateway</html>", {"Content-Type": "text/html"})
            if fault == "blocked":
                return self.error(422, [{"loc": ["body", "prompt"], "msg": "The prompt was flagged by the content checker",
                                         "type": "content_policy_violation", "url": "https://docs.fal.ai/errors/#content_policy_violation"}])
            rid = uuid.uuid4().hex
            self.jobs[rid] = body
            app = "/".join(req.path.strip("/").split("/")[:2])
            host = self.foreign_host if fault == "foreign_status" and self.foreign_host else self.url  # status/result URLs elsewhere
            base = f"{host}/{app}/requests/{rid}"
            return Reply.json({"request_id": rid, "response_url": base, "status_url": f"{base}/status", "cancel_url": f"{base}/cancel"})
        return Reply.json({"detail": "Not found"}, 404)
