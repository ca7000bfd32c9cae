"""Leonardo.ai REST v1 emulator: POST /generations, GET /generations/{id}, image download."""

from __future__ import annotations

import re
import uuid

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

KEY = "leo-test-key-0000"


class LeonardoEmulator(Emulator):
    def __init__(self, polls_before_done: int = 2) -> None:
        super().__init__()
        self.polls: dict[str, int] = {}
        self.polls_before_done = polls_before_done

    def handle(self, req: Request) -> Reply:
        if req.path.startswith("/cdn/"):
            return self.image_reply()
        if self.fault == "echo_key":
            return Reply.json({"error": f"Invalid authentication: token {self.credential(req)} is not valid", "path": "$",
                               "code": "invalid-jwt"}, 401)
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return Reply.json({"error": "Invalid authentication", "path": "$", "code": "invalid-jwt"}, 401)
        if req.path == "/api/rest/v1/me":
            return Reply.json({"user_details": [{"user": {"id": "u1", "username": "test"}, "apiConcurrencySlots": 2}]})
        m = re.fullmatch(r"/api/rest/v1/generations(?:/(?P<gid>[\w-]+))?", req.path)
        if not m:
            return Reply.json({"error": "not found", "path": "$", "code": "not-found"}, 404)
        if req.method == "GET" and m["gid"]:
            gid = m["gid"]
            n = self.polls[gid] = self.polls.get(gid, 0) + 1
            if n < self.polls_before_done:
                return Reply.json({"generations_by_pk": {"id": gid, "status": "PENDING", "generated_images": []}})
            nsfw = self.fault == "blocked"
            return Reply.json({"generations_by_pk": {
                "id": gid, "status": "COMPLETE", "modelId": "1dd50843-d653-4516-a8e3-f0238ee453ff", "imageWidth": 1024, "imageHeight": 768,
                "generated_images": [{"id": uuid.uuid4().hex, "url": self.image_url(f"/cdn/{gid}.png"), "nsfw": nsfw, "likeCount": 0}]}})
        body = req.json() or {}
        if not body.get("prompt") or not body.get("modelId"):
            return Reply.json({"error": "prompt and modelId are required", "path": "$", "code": "validation-failed"}, 400)
        fault = self.fault
        if fault == "400":
            return Reply.json({"error": "width must be a multiple of 8", "path": "$.width", "code": "validation-failed"}, 400)
        if fault == "401":
            return Reply.json({"error": "Invalid authentication", "path": "$", "code": "invalid-jwt"}, 401)
        if fault == "429":
            return Reply.json({"error": "Too many requests", "path": "$", "code": "rate-limited"}, 429,
                              **{"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return Reply.json({"error": "internal error", "path": "$", "code": "unexpected"}, 500)
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply.json({"sdGenerationJob": None})
        return Reply.json({"sdGenerationJob": {"generationId": str(uuid.uuid4()), "apiCreditCost": 24}})
