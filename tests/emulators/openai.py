"""OpenAI emulator: POST /v1/images/generations (JSON), /v1/images/edits (multipart, image or image[]) and
/v1/chat/completions (vision input, json_schema response format) for the judge and refiner."""

from __future__ import annotations

import base64
import json
import re

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request
from .answers import answer_for

KEY = "test-openai-key-0000"


class OpenAIEmulator(Emulator):
    def __init__(self) -> None:
        super().__init__()
        self.edit_images: list[int] = []  # number of image parts per edit request

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
        if req.path.endswith("/edits"):
            parts = re.findall(rb'name="(image(?:\[\])?)"', req.body)
            self.edit_images.append(len(parts))
            if not parts:
                return self.error(400, "Missing required parameter: 'image'.", "invalid_request_error", "missing_required_parameter")
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
            "created": 1713833628, "data": [{"b64_json": base64.b64encode(image).decode(), "url": None, "revised_prompt": None}],
            "background": "opaque", "output_format": reply.headers["Content-Type"].split("/")[1], "quality": "medium", "size": "1536x1024",
            "usage": {"input_tokens": 50, "input_tokens_details": {"text_tokens": 50, "image_tokens": 0},
                      "output_tokens": 4160, "output_tokens_details": {"text_tokens": 0, "image_tokens": 4160}, "total_tokens": 4210},
        })

    def chat(self, body: dict) -> Reply:
        messages = body.get("messages", [])
        user = messages[-1]["content"] if messages else ""
        text = user if isinstance(user, str) else " ".join(p.get("text", "") for p in user if p.get("type") == "text")
        schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
        answer = answer_for(schema.get("title", ""), text)
        if answer is None:
            return self.error(400, "response_format json_schema is required", "invalid_request_error")
        return Reply.json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": body.get("model", ""),
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": json.dumps(answer), "refusal": None}}],
                           "usage": {"prompt_tokens": 900, "completion_tokens": 150, "total_tokens": 1050}})
