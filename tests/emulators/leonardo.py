"""Leonardo.ai REST v1 emulator: POST /generations, GET /generations/{id}, image download, and the init-image
upload (POST /init-image, then the presigned S3 POST it names)."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid

from PIL import Image

from . import RETRY_AFTER_S, SLOW_S, Emulator, Reply, Request, multipart

KEY = "leo-test-key-0000"


class LeonardoEmulator(Emulator):
    def __init__(self, polls_before_done: int = 2) -> None:
        super().__init__()
        self.polls: dict[str, int] = {}
        self.polls_before_done = polls_before_done
        self.jobs: dict[str, dict] = {}  # generation id -> the request body
        self.presigned: dict[str, tuple[str, str, dict[str, str]]] = {}  # S3 key -> (init image id, extension, signed fields)
        self.uploaded: dict[str, bytes] = {}  # init image id -> the file stored through the presigned POST

    def handle(self, req: Request) -> Reply:
        if req.path.startswith("/cdn/"):
            return self.image_reply()
        if req.path == "/s3/init-images":
            return self.s3_upload(req)
        if self.fault == "echo_key":
            return Reply.json({"error": f"Invalid authentication: token {self.credential(req)} is not valid", "path": "$",
                               "code": "invalid-jwt"}, 401)
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return Reply.json({"error": "Invalid authentication", "path": "$", "code": "invalid-jwt"}, 401)
        if req.path == "/api/rest/v1/me":
            return Reply.json({"user_details": [{"user": {"id": "u1", "username": "test"}, "apiConcurrencySlots": 2}]})
        if req.path == "/api/rest/v1/init-image" and req.method == "POST":
            return self.init_image(req.json() or {})
        m = re.fullmatch(r"/api/rest/v1/generations(?:/(?P<gid>[\w-]+))?", req.path)
        if not m:
            return Reply.json({"error": "not found", "path": "$", "code": "not-found"}, 404)
        if req.method == "GET" and m["gid"]:
            gid = m["gid"]
            n = self.polls[gid] = self.polls.get(gid, 0) + 1
            if n < self.polls_before_done:
                return Reply.json({"generations_by_pk": {"id": gid, "status": "PENDING", "generated_images": []}})
            nsfw = self.fault == "blocked"
            count = int(self.jobs.get(gid, {}).get("num_images") or 1)
            return Reply.json({"generations_by_pk": {
                "id": gid, "status": "COMPLETE", "modelId": "1dd50843-d653-4516-a8e3-f0238ee453ff", "imageWidth": 1024, "imageHeight": 768,
                "generated_images": [{"id": uuid.uuid4().hex, "url": self.image_url(f"/cdn/{gid}-{i}.png"), "nsfw": nsfw, "likeCount": 0}
                                     for i in range(count)]}})
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
        if body.get("init_image_id") is not None:
            if body["init_image_id"] not in self.uploaded:
                return Reply.json({"error": f"init image {body['init_image_id']} not found or not uploaded", "path": "$.init_image_id",
                                   "code": "validation-failed"}, 400)
            if not 0.1 <= float(body.get("init_strength", 0.3)) <= 0.9:
                return Reply.json({"error": "init_strength must be between 0.1 and 0.9", "path": "$.init_strength",
                                   "code": "validation-failed"}, 400)
        gid = str(uuid.uuid4())
        self.jobs[gid] = body
        return Reply.json({"sdGenerationJob": {"generationId": gid, "apiCreditCost": 24}})

    def init_image(self, body: dict) -> Reply:
        """POST /init-image: a presigned S3 POST for the file (its fields as a JSON string)."""
        extension = body.get("extension")
        if extension not in ("png", "jpg", "jpeg", "webp"):
            return Reply.json({"error": "Invalid file extension. Has to be png, jpg, jpeg, or webp.", "path": "$.extension",
                               "code": "unexpected"}, 400)
        image_id = str(uuid.uuid4())
        key = f"users/u1/initImages/{image_id}.{extension}"
        fields = {"Content-Type": f"image/{'jpeg' if extension == 'jpg' else extension}", "bucket": "leonardo-emulator", "key": key,
                  "Policy": base64.b64encode(json.dumps({"key": key}).encode()).decode(), "X-Amz-Signature": uuid.uuid4().hex}
        self.presigned[key] = (image_id, extension, fields)
        return Reply.json({"uploadInitImage": {"id": image_id, "fields": json.dumps(fields), "key": key,
                                               "url": f"{self.url}/s3/init-images"}})

    def s3_upload(self, req: Request) -> Reply:
        """The presigned POST as S3 checks it: every field as given, the ``file`` part last, no other credentials."""
        def s3_error(code: str, message: str, status: int = 400) -> Reply:
            return Reply(status, f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message></Error>",
                         {"Content-Type": "application/xml"})
        if req.method != "POST":
            return s3_error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
        if "authorization" in req.headers:
            return s3_error("InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query "
                            "string parameter or the Authorization header should be specified")
        parts = multipart.parts(req)
        fields = multipart.fields(parts)
        entry = self.presigned.get(fields.get("key", ""))
        if entry is None:
            return s3_error("AccessDenied", "Invalid according to Policy: Policy Condition failed: [\"eq\", \"$key\"]", 403)
        image_id, extension, signed = entry
        if any(fields.get(k) != v for k, v in signed.items()):
            return s3_error("AccessDenied", "Invalid according to Policy: Policy Condition failed", 403)
        if not parts or parts[-1].name != "file" or parts[-1].filename is None:
            return s3_error("InvalidArgument", "POST requires exactly one file upload per request.")
        try:
            fmt = str(Image.open(io.BytesIO(parts[-1].data)).format).lower()
        except OSError:
            fmt = ""
        if fmt != {"jpg": "jpeg"}.get(extension, extension):
            return s3_error("InvalidArgument", f"the file is not a {extension} image")  # Leonardo fails such a generation later
        self.uploaded[image_id] = parts[-1].data
        return Reply(204, b"")
