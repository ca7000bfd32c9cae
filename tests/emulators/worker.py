"""A user-deployed image worker: GET ?prompt=… or POST JSON, Bearer token, image bytes back."""

from __future__ import annotations

import base64
import io

from PIL import Image

from . import RETRY_AFTER_S, Emulator, Reply, Request

TOKEN = "worker-test-token-0000"


class WorkerEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.retry_after: dict[str, str] = {"Retry-After": str(RETRY_AFTER_S)}  # the 429's headers
        self.down = False  # every request fails with 503 while set (a provider that died)
        self.received_images: list[list[tuple[str, str, bytes]]] = []  # per POST: (role, name, bytes) of each reference

    def check_references(self, refs: object) -> Reply | None:
        """``reference_images``: a list of {data (base64), mime_type, role, name} whose bytes are the image they claim."""
        if refs is None:
            return None
        if not isinstance(refs, list):
            return Reply.json({"error": "reference_images must be a list"}, 400)
        received = []
        for i, ref in enumerate(refs):
            if not isinstance(ref, dict) or ref.get("role") not in ("subject", "style", "composition", "mask"):
                return Reply.json({"error": f"reference_images[{i}] needs data, mime_type and a known role"}, 400)
            try:
                data = base64.b64decode(str(ref.get("data", "")), validate=True)
                fmt = str(Image.open(io.BytesIO(data)).format).lower()
            except (ValueError, OSError):
                return Reply.json({"error": f"reference_images[{i}].data is not a base64 image"}, 400)
            if ref.get("mime_type") != f"image/{fmt}":
                return Reply.json({"error": f"reference_images[{i}] is {fmt}, not {ref.get('mime_type')}"}, 400)
            received.append((str(ref["role"]), str(ref.get("name", "")), data))
        self.received_images.append(received)
        return None

    def handle(self, req: Request) -> Reply:
        if req.path != "/generate":
            return Reply.json({"error": "not found"}, 404)
        if self.fault == "echo_key":
            return Reply.json({"error": f"bad token {self.credential(req)}"}, 401)
        if req.headers.get("authorization") != f"Bearer {TOKEN}":
            return Reply.json({"error": "bad token"}, 401)
        prompt = req.query.get("prompt", [""])[0] if req.method == "GET" else (req.json() or {}).get("prompt", "")
        if not prompt:
            return Reply.json({"error": "prompt is required"}, 400)
        if req.method == "POST":
            refused = self.check_references((req.json() or {}).get("reference_images"))
            if refused is not None:
                return refused
        fault = self.fault
        if self.down:
            return Reply.json({"error": "service unavailable"}, 503)
        if fault == "404":
            return Reply.json({"error": "model not found"}, 404)
        if fault == "400":
            return Reply.json({"error": "width must be a multiple of 64"}, 400)
        if fault == "401":
            return Reply.json({"error": "bad token"}, 401)
        if fault == "429":
            return Reply.json({"error": "busy"}, 429, **self.retry_after)
        if fault == "500":
            return Reply(500, "Traceback (most recent call last): …", {"Content-Type": "text/plain"})
        if fault == "timeout":
            return Reply(200, b"", {"Content-Type": "image/png"}, delay=self.slow_s)
        if fault == "malformed":
            return Reply(200, "<html>cold start</html>", {"Content-Type": "text/html"})
        if fault == "blocked":
            return Reply.json({"error": "prompt refused by the safety filter", "blocked": True}, 451)
        return self.image_reply()
