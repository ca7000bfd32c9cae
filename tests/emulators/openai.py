"""OpenAI emulator: POST /v1/images/generations (JSON), /v1/images/edits (multipart, image or image[]) and
/v1/chat/completions (vision input, json_schema response format) for the judge and refiner; a chat request's
``image_url`` data URLs are checked and recorded in ``judged_images`` (:mod:`tests.emulators.judging`)."""

from __future__ import annotations

import base64
import io
import json
import re

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request, multipart
from .answers import answer_for
from .judging import image_format, with_reference_verdict

KEY = "test-openai-key-0000"


class OpenAIEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.edit_images: list[int] = []  # number of image parts per edit request
        self.edits: list[list[multipart.Part]] = []  # the form parts of each edit request
        self.judged_images: list[list[tuple[str, bytes]]] = []  # the (MIME type, bytes) image_url parts of each chat request
        self.reference_verdict = "yes"  # tests.emulators.judging: how "the same character as the reference?" is answered
        # What OpenAI reports with each answer (x-ratelimit-*): a window of requests and tokens, counted down.
        self.limit_requests, self.remaining_requests, self.reset_requests = 500, 500, "12s"
        self.limit_tokens, self.remaining_tokens = 200_000, 200_000

    def ratelimit_headers(self, tokens: int) -> dict[str, str]:
        self.remaining_requests = max(0, self.remaining_requests - 1)
        self.remaining_tokens = max(0, self.remaining_tokens - tokens)
        return {"x-ratelimit-limit-requests": str(self.limit_requests), "x-ratelimit-remaining-requests": str(self.remaining_requests),
                "x-ratelimit-reset-requests": self.reset_requests, "x-ratelimit-limit-tokens": str(self.limit_tokens),
                "x-ratelimit-remaining-tokens": str(self.remaining_tokens), "x-ratelimit-reset-tokens": "6m0s"}

    def error(self, status: int, message: str, type_: str, code: str | None = None, **headers: str) -> Reply:
        return Reply.json({"error": {"message": message, "type": type_, "param": None, "code": code}}, status, **headers)

    def handle(self, req: Request) -> Reply:
        if req.method == "GET" and req.path.startswith("/v1/models/"):
            if req.headers.get("authorization") != f"Bearer {KEY}":
                return self.error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
            return Reply.json({"id": req.path.rsplit("/", 1)[1], "object": "model", "created": 1, "owned_by": "openai"})
        if req.path not in ("/v1/images/generations", "/v1/images/edits", "/v1/chat/completions"):
            return self.error(404, f"Unknown request URL: {req.method} {req.path}", "invalid_request_error", "unknown_url")
        if self.fault == "echo_key":
            return self.error(401, f"Incorrect API key provided: {self.credential(req)}. You can find your API key at "
                              "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key")
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return self.error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        n = 1
        if req.path.endswith("/edits"):
            refused = self.edit(req)
            if refused is not None:
                return refused
            n = int(multipart.fields(self.edits[-1]).get("n", "1"))
        elif req.path.endswith("/generations"):
            n = int((req.json() or {}).get("n") or 1)
        fault = self.fault
        if fault == "400":
            return self.error(400, "Invalid value: '999x999'. Supported values are: '1024x1024', ...", "invalid_request_error", "invalid_value")
        if fault == "401":
            return self.error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if fault == "429":
            return self.error(429, "Rate limit reached for images per minute.", "requests", "rate_limit_exceeded",
                              **{"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return self.error(500, "The server had an error while processing your request.", "server_error")
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply(200, "<html>Bad gateway</html>", {"Content-Type": "text/html"})
        if fault == "blocked" and req.path.endswith("/chat/completions"):
            return Reply.json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4.1-mini",
                               "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                   "role": "assistant", "content": None, "refusal": "I can't help with that image."}}]})
        if fault == "blocked":
            return self.error(400, "Your request was rejected by the safety system. safety_violations=[violence].",
                              "image_generation_user_error", "moderation_blocked")
        if req.path.endswith("/chat/completions"):
            return self.chat(req.json())
        huge = self.image_b64_reply('{"created": 1713833628, "data": [{"b64_json": "', '"}], "output_format": "png"}')
        if huge:
            return huge
        reply = self.image_reply()
        image = reply.body
        return Reply.json({
            "created": 1713833628, "data": [{"b64_json": base64.b64encode(image).decode(), "url": None, "revised_prompt": None}] * n,
            "background": "opaque", "output_format": reply.headers["Content-Type"].split("/")[1], "quality": "medium", "size": "1536x1024",
            "usage": {"input_tokens": 50, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                      "output_tokens": 4160, "output_tokens_details": {"text_tokens": 0, "image_tokens": 4160}, "total_tokens": 4210},
        }, **self.ratelimit_headers(4210))

    def edit(self, req: Request) -> Reply | None:
        """Checks an images.edit upload as the service does: ``image[]`` (or one ``image``) file
        parts of PNG, JPEG or WEBP, at most 16; an optional ``mask`` PNG of the first image's size."""
        found = multipart.parts(req)
        self.edits.append(found)
        images = [p for p in found if p.name in ("image", "image[]") and p.filename is not None]
        self.edit_images.append(len(images))
        if not images:
            return self.error(400, "Missing required parameter: 'image'.", "invalid_request_error", "missing_required_parameter")
        if len(images) > 16:
            return self.error(400, f"Too many images: {len(images)}. At most 16 are allowed.", "invalid_request_error", "invalid_value")
        sizes = []
        for part in images:
            fmt = self.image_format(part.data)
            if fmt not in ("PNG", "JPEG", "WEBP"):
                return self.error(400, f"Invalid file 'image': unsupported mimetype ('{part.content_type}'). Supported file formats are "
                                  "'image/jpeg', 'image/png', and 'image/webp'.", "invalid_request_error", "unsupported_file_mimetype")
            sizes.append(Image.open(io.BytesIO(part.data)).size)
        mask = next((p for p in found if p.name == "mask"), None)
        if mask is not None:
            if self.image_format(mask.data) != "PNG":
                return self.error(400, "Invalid file 'mask': the mask must be a PNG.", "invalid_request_error", "invalid_image_format")
            if Image.open(io.BytesIO(mask.data)).size != sizes[0]:
                return self.error(400, "Invalid mask image format - mask size does not match image size",
                                  "invalid_request_error", "invalid_image_format")
        return None

    @staticmethod
    def image_format(data: bytes) -> str:
        try:
            return str(Image.open(io.BytesIO(data)).format)
        except OSError:
            return ""

    def chat_images(self, content: list) -> Reply | None:
        """``image_url`` parts as Chat Completions reads them: a ``data:`` URL with base64 of a PNG,
        JPEG, WEBP or GIF whose bytes are that type; at most 500 images and 50 MB a request."""
        received = []
        for part in content:
            if part.get("type") != "image_url":
                continue
            url = str((part.get("image_url") or {}).get("url", ""))
            m = re.fullmatch(r"data:(image/[a-z]+);base64,([A-Za-z0-9+/=]*)", url)
            if not m:
                return self.error(400, "Invalid image_url: expected a URL or a base64 data URL ('data:image/png;base64,...').",
                                  "invalid_request_error", "invalid_image_url")
            data = base64.b64decode(m[2])
            fmt = image_format(data)
            if fmt not in ("PNG", "JPEG", "WEBP", "GIF") or m[1] != f"image/{fmt.lower()}":
                return self.error(400, "You uploaded an unsupported image. Please make sure your image has of one the following formats: "
                                  "['png', 'jpeg', 'gif', 'webp'].", "invalid_request_error", "invalid_image_format")
            received.append((m[1], data))
        if len(received) > 500 or sum(len(d) for _, d in received) > 50 * 1024 * 1024:
            return self.error(400, "Too many images or image bytes in one request (at most 500 images, 50 MB).", "invalid_request_error",
                              "invalid_value")
        self.judged_images.append(received)
        return None

    def chat(self, body: dict) -> Reply:
        messages = body.get("messages", [])
        user = messages[-1]["content"] if messages else ""
        text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user if p.get("type") == "text")
        refused = self.chat_images(user if isinstance(user, list) else [])
        if refused is not None:
            return refused
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        answer = with_reference_verdict(answer_for(schema.get("title", ""), text), text, self.reference_verdict, len(self.judged_images[-1]))
        if answer is None:
            return self.error(400, "response_format json_schema is required", "invalid_request_error")
        return Reply.json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.get("model", ""),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": json.dumps(answer), "refusal": None}}],
                           "usage": {"prompt_tokens": 900, "completion_tokens": 150, "total_tokens": 1050}},
                          **self.ratelimit_headers(1050))
