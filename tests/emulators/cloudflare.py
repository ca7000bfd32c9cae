"""Cloudflare Workers AI emulator: /accounts/{account}/ai/run/{model}; flux answers base64 JSON, SDXL raw bytes."""

from __future__ import annotations

import base64
import re

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

TOKEN = "cf-test-token-0000"
ACCOUNT = "acc123"


class CloudflareEmulator(Emulator):
    models: tuple[str, ...] = ("@cf/black-forest-labs/flux-1-schnell", "@cf/stabilityai/stable-diffusion-xl-base-1.0")
    def envelope_error(self, status: int, code: int, message: str, **headers: str) -> Reply:
        return Reply.json({"result": None, "success": False, "errors": [{"code": code, "message": message}], "messages": []}, status, **headers)

    def handle(self, req: Request) -> Reply:
        if req.path == f"/accounts/{ACCOUNT}/ai/models/search":
            if req.headers.get("authorization") != f"Bearer {TOKEN}":
                return self.envelope_error(401, 10000, "Authentication error")
            term = req.query.get("search", [""])[0]
            found = [{"id": str(i), "name": name} for i, name in enumerate(self.models) if term in name]
            return Reply.json({"result": found, "success": True, "errors": [], "messages": []})
        m = re.fullmatch(r"/accounts/(?P<acc>[^/]+)/ai/run/(?P<model>@cf/.+)", req.path)
        if not m or m["acc"] != ACCOUNT:
            return self.envelope_error(404, 7003, "Could not route to the requested account")
        if self.fault == "echo_key":
            return self.envelope_error(401, 10000, f"Authentication error: token {self.credential(req)} is invalid")
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.envelope_error(401, 10000, "Authentication error")
        fault = self.fault
        if fault == "400":
            return self.envelope_error(400, 3003, "Bad input: incomplete request")
        if fault == "401":
            return self.envelope_error(401, 10000, "Authentication error")
        if fault == "429":
            return self.envelope_error(429, 3040, "Capacity temporarily exceeded, please try again.", **{"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return self.envelope_error(500, 3043, "Internal server error")
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply(200, '{"result": {"ima', {"Content-Type": "application/json"})
        if fault == "blocked":
            return self.envelope_error(400, 3030, "Input prompt contains NSFW content.")
        image = self.image_reply()
        if "flux" in m["model"]:
            huge = self.image_b64_reply('{"result": {"image": "', '"}, "success": true, "errors": [], "messages": []}')
            if huge:
                return huge
            return Reply.json({"result": {"image": base64.b64encode(image.body).decode()}, "success": True, "errors": [], "messages": []})
        return image  # SDXL: raw bytes
