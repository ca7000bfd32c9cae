"""Cloudflare Workers AI emulator: /accounts/{account}/ai/run/{model}; flux answers base64 JSON, SDXL and SD 1.5
img2img raw bytes (img2img reads ``image`` as an array of byte values)."""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request

TOKEN = "cf-test-token-0000"
ACCOUNT = "acc123"


class CloudflareEmulator(Emulator):
    models: tuple[str, ...] = ("@cf/black-forest-labs/flux-1-schnell", "@cf/stabilityai/stable-diffusion-xl-base-1.0",
                               "@cf/runwayml/stable-diffusion-v1-5-img2img")

    def __init__(self) -> None:
        super().__init__()
        self.received_images: list[bytes] = []  # the decoded `image` of each img2img request

    def check_image(self, model: str, body: dict) -> Reply | None:
        """img2img input as the model schema reads it: ``image`` an array of uint8 values (or ``image_b64``)
        that is an image; required by the img2img model; ``strength`` within 0..1."""
        if "img2img" in model and "image" not in body and "image_b64" not in body:
            return self.envelope_error(400, 5006, "AiError: Bad input: must have required property 'image'")
        if "image" in body:
            values = body["image"]
            if not isinstance(values, list) or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
                return self.envelope_error(400, 5006, "AiError: Bad input: /image must be array of integers 0-255")
            data = bytes(values)
        elif "image_b64" in body:
            try:
                data = base64.b64decode(str(body["image_b64"]), validate=True)
            except ValueError:
                return self.envelope_error(400, 5004, "Invalid base64 in image_b64")
        else:
            return None
        try:
            Image.open(io.BytesIO(data)).verify()
        except OSError:
            return self.envelope_error(400, 5006, "AiError: Bad input: the image could not be decoded")
        if not 0 <= float(body.get("strength", 1)) <= 1:
            return self.envelope_error(400, 5006, "AiError: Bad input: /strength must be <= 1")
        self.received_images.append(data)
        return None

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
        refused = self.check_image(m["model"], req.json() or {})
        if refused is not None:
            return refused
        image = self.image_reply()
        if "flux" in m["model"]:
            huge = self.image_b64_reply('{"result": {"image": "', '"}, "success": true, "errors": [], "messages": []}')
            if huge:
                return huge
            return Reply.json({"result": {"image": base64.b64encode(image.body).decode()}, "success": True, "errors": [], "messages": []})
        return image  # SDXL: raw bytes
