"""Ollama emulator: POST /api/chat (images as raw base64, ``format`` = JSON schema, stream false or NDJSON).

A chat request's ``images`` are checked and recorded in ``judged_images`` (:mod:`tests.emulators.judging`)."""

from __future__ import annotations

import base64
import json

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request
from .answers import answer_for
from .judging import image_format, with_reference_verdict


class OllamaEmulator(Emulator):
    models: tuple[str, ...] = ("qwen2.5vl",)  # what `ollama list` shows; a test may set it per instance

    def __init__(self) -> None:
        super().__init__()
        self.judged_images: list[list[tuple[str, bytes]]] = []  # the (format, bytes) of each chat request's ``images``
        self.reference_verdict = "yes"  # tests.emulators.judging: how "the same character as the reference?" is answered

    def chat_images(self, user: dict) -> Reply | None:
        """The message's ``images`` as Ollama reads them: raw base64 (a ``data:`` prefix is illegal
        base64), each an image the model's projector can decode."""
        received = []
        for item in user.get("images") or []:
            try:
                data = base64.b64decode(str(item), validate=True)
            except ValueError:
                return Reply.json({"error": "illegal base64 data at input byte 4"}, 400)
            fmt = image_format(data)
            if not fmt:
                return Reply.json({"error": "failed to process inputs: image: unknown format"}, 500)
            received.append((f"image/{fmt.lower()}", data))
        self.judged_images.append(received)
        return None

    def handle(self, req: Request) -> Reply:
        if self.fault == "echo_key":
            return Reply.json({"error": f"unauthorized: key {self.credential(req)} not recognised"}, 401)
        if req.path == "/api/tags":
            return Reply.json({"models": [{"name": m, "model": m} for m in self.models]})
        if req.path != "/api/chat":
            return Reply(404, "404 page not found", {"Content-Type": "text/plain"})
        body = req.json() or {}
        if body.get("model") not in self.models:
            return Reply.json({"error": f"model '{body.get('model')}' not found"}, 404)
        fault = self.fault
        if fault == "400":
            return Reply.json({"error": "invalid format: expected 'json' or a JSON schema"}, 400)
        if fault == "401":
            return Reply.json({"error": "unauthorized"}, 401)
        if fault == "429":
            return Reply.json({"error": "server busy, please try again. maximum pending requests exceeded"}, 429,
                              **{"Retry-After": str(RETRY_AFTER_S)})
        if fault == "500":
            return Reply.json({"error": "llama runner process has terminated: signal: killed"}, 500)
        if fault == "timeout":
            return Reply(200, {}, delay=SLOW_S)
        if fault == "malformed":
            return Reply(200, "Ollama is running", {"Content-Type": "text/plain"})
        user = body["messages"][-1]
        refused = self.chat_images(user)
        if refused is not None:
            return refused
        schema = body.get("format") if isinstance(body.get("format"), dict) else {}
        text = user.get("content", "")
        answer = with_reference_verdict(answer_for(schema.get("title", ""), text), text, self.reference_verdict, len(self.judged_images[-1]))
        if fault == "blocked":  # local models have no filter: a refusal in words, not the schema
            content = "I'm sorry, but I can't help with that."
        else:
            content = json.dumps(answer)
        message = {"model": body["model"], "created_at": "2026-11-21T00:00:00Z", "message": {"role": "assistant", "content": content},
                   "done": True, "done_reason": "stop", "total_duration": 1, "prompt_eval_count": 10, "eval_count": 20}
        if body.get("stream", True):  # the REST default is NDJSON
            return Reply(200, json.dumps(message) + "\n", {"Content-Type": "application/x-ndjson"})
        return Reply.json(message)
