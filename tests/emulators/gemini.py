"""Gemini API emulator: POST /v1beta/models/{model}:generateContent (camelCase wire format, x-goog-api-key).

Answers image requests (``responseModalities`` with IMAGE) with an ``inlineData`` part, and JSON
requests by the schema's title: elements for a prompt, answers for a judgement, a new prompt
for a refinement. Errors use the google.rpc shape; a 429 carries ``RetryInfo.retryDelay``.
A judging request's ``inlineData`` parts are checked and recorded in ``judged_images``
(:mod:`tests.emulators.judging`).
"""

from __future__ import annotations

import base64
import io
import json
import re

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request
from .answers import answer_for
from .judging import with_reference_verdict

KEY = "gemini-test-key-0000"
class GeminiEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.usage = {"promptTokenCount": 1200, "candidatesTokenCount": 300, "totalTokenCount": 1500}
        self.received_images: list[list[tuple[str, bytes]]] = []  # the (MIME type, bytes) image parts of each image request
        self.judged_images: list[list[tuple[str, bytes]]] = []  # the same for each JSON (judging) request: candidate, then references
        self.reference_verdict = "yes"  # tests.emulators.judging: how "the same character as the reference?" is answered

    def check_inline_images(self, body: dict, into: list[list[tuple[str, bytes]]] | None = None) -> Reply | None:
        """Image parts (``inlineData`` with ``mimeType`` and base64 ``data``) as the API reads them:
        a supported type whose bytes are that image, and the whole request under 20 MB. Recorded in
        ``into`` (default: ``received_images``)."""
        if len(json.dumps(body)) > 20 * 1024 * 1024:
            return self.error(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit: 20971520 bytes.")
        received = []
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                inline = part.get("inlineData") or part.get("inline_data")  # proto JSON: either spelling of a field
                if inline is None:
                    continue
                mime = inline.get("mimeType") or inline.get("mime_type") or ""
                if mime not in ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif"):
                    return self.error(400, "INVALID_ARGUMENT", f"Unsupported MIME type: {mime}")
                try:
                    data = base64.b64decode(str(inline.get("data", "")).replace("-", "+").replace("_", "/"), validate=True)  # either alphabet
                    fmt = Image.open(io.BytesIO(data)).format
                except (ValueError, OSError):
                    return self.error(400, "INVALID_ARGUMENT", "Unable to process input image. Please retry or report in "
                                      "https://developers.generativeai.google/guide/troubleshooting")
                if f"image/{str(fmt).lower()}" != mime.replace("jpg", "jpeg"):
                    return self.error(400, "INVALID_ARGUMENT", "Unable to process input image. Please retry or report in "
                                      "https://developers.generativeai.google/guide/troubleshooting")
                received.append((mime, data))
        (self.received_images if into is None else into).append(received)
        return None

    def error(self, code: int, status: str, message: str, details: list | None = None) -> Reply:
        return Reply.json({"error": {"code": code, "message": message, "status": status, "details": details or []}}, code)

    def handle(self, req: Request) -> Reply:
        if req.method == "GET" and req.path.startswith("/v1beta/models/"):
            if req.headers.get("x-goog-api-key") != KEY:
                return self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")
            return Reply.json({"name": req.path.removeprefix("/v1beta/"), "supportedGenerationMethods": ["generateContent"]})
        m = re.fullmatch(r"/v1beta/models/(?P<model>[^/:]+):generateContent", req.path)
        if not m:
            return self.error(404, "NOT_FOUND", f"models/{req.path} is not found for API version v1beta")
        if self.fault == "echo_key":
            return self.error(400, "INVALID_ARGUMENT", f"API key not valid: {self.credential(req)}. Please pass a valid API key.",
                              [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
        if req.headers.get("x-goog-api-key") != KEY:
            return self.error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                              [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}])
        fault = self.fault
        if fault == "400":
            return self.error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        if fault == "401":
            return self.error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if fault == "429":
            return self.error(429, "RESOURCE_EXHAUSTED", f"You exceeded your current quota. Please retry in {RETRY_AFTER_S}.0s.",
                              [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{RETRY_AFTER_S}s"}])
        if fault == "500":
            return self.error(500, "INTERNAL", "An internal error has occurred.")
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply(200, "<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})
        if fault == "blocked":
            return Reply.json({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
                               "modelVersion": m["model"]})
        body = req.json()
        config = body.get("generationConfig", {})
        text = " ".join(p.get("text", "") for c in body.get("contents", []) for p in c.get("parts", []))
        if "IMAGE" in config.get("responseModalities", []):
            refused = self.check_inline_images(body)
            if refused is not None:
                return refused
            if self.fault == "image_safety":
                return Reply.json({"candidates": [{"content": {"role": "model", "parts": []}, "finishReason": "IMAGE_SAFETY", "index": 0}],
                                   "modelVersion": m["model"]})
            huge = self.image_b64_reply('{"candidates": [{"content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": "',
                                        '"}}]}, "finishReason": "STOP", "index": 0}]}')
            if huge:
                return huge
            image = self.image_reply()
            parts = [{"text": "Here is your image."},
                     {"inlineData": {"mimeType": image.headers["Content-Type"], "data": base64.b64encode(image.body).decode()}}]
            return Reply.json({"candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                               "usageMetadata": {**self.usage, "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]},
                               "modelVersion": m["model"]})
        refused = self.check_inline_images(body, self.judged_images)
        if refused is not None:
            return refused
        schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
        answer = with_reference_verdict(answer_for(schema.get("title", ""), text), text, self.reference_verdict, len(self.judged_images[-1]))
        if answer is None:
            return self.error(400, "INVALID_ARGUMENT", f"emulator: unknown schema {schema.get('title')!r}")
        return Reply.json({"candidates": [{"content": {"role": "model", "parts": [{"text": json.dumps(answer)}]}, "finishReason": "STOP",
                                           "index": 0}], "usageMetadata": self.usage, "modelVersion": m["model"]})
