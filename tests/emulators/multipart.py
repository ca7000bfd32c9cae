"""multipart/form-data as a server reads it (the stdlib's email parser), for the emulators whose
services take uploads: OpenAI images.edit, ComfyUI /upload/image, Leonardo's presigned S3 POST."""

from __future__ import annotations

from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP

from . import Request


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def parts(req: Request) -> list[Part]:
    """The request's form parts in order; [] when it is not multipart/form-data."""
    content_type = req.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        return []
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + req.body)
    found = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename()
        data = part.get_payload(decode=True) or b""
        found.append(Part(str(name or ""), filename, part.get_content_type() if part.get("content-type") else "", data))
    return found


def fields(found: list[Part]) -> dict[str, str]:
    """The plain (non-file) fields by name."""
    return {p.name: p.text for p in found if p.filename is None}
