"""Reference images kept in the data folder, addressed by content: ``references/ab/abcd….png``.

A prompt set's images are stored when its run is launched (one file per distinct image, however
many prompts and runs use it; each written atomically), and their path, hash and role are rows
of ``prompt_reference``. A resumed run reads them back from here, checked against the hash.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.components import ReferenceImage
from pipeline.errors import StorageError
from pipeline.files import atomic_write_bytes
from pipeline.images import FORMATS
from pipeline.prompts.promptset import PromptSetSpec
from pipeline.store.models import PromptReference

FOLDER = "references"
_EXTENSIONS = {mime: ext for mime, ext in FORMATS.values()}


def relative_path(sha256: str, mime_type: str) -> str:
    return f"{FOLDER}/{sha256[:2]}/{sha256}.{_EXTENSIONS.get(mime_type, 'img')}"


def store_references(data_dir: Path, spec: PromptSetSpec) -> dict[str, str]:
    """Write every reference image of ``spec`` not stored yet; return sha256 -> path (relative to ``data_dir``)."""
    stored: dict[str, str] = {}
    for ref in spec.references():
        if not ref.sha256 or ref.sha256 in stored:
            continue
        rel = relative_path(ref.sha256, ref.mime_type)
        target = data_dir / rel
        if not _holds(target, ref.sha256):
            atomic_write_bytes(target, ref.read())  # one image in memory at a time
        stored[ref.sha256] = rel
    return stored


def _holds(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def load_reference(data_dir: Path, row: PromptReference) -> ReferenceImage:
    """The stored image of ``row``, or a :class:`StorageError` saying which one is missing or changed."""
    path = data_dir / row.path
    what = f"reference image {row.name or row.sha256[:12]} ({row.role})"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StorageError(f"{what} cannot be read from {path}: {e.strerror or type(e).__name__}; launch the prompt set again "
                           "to store its images") from None
    if hashlib.sha256(data).hexdigest() != row.sha256:
        raise StorageError(f"{what} at {path} has changed since it was stored (its hash differs); launch the prompt set again")
    return ReferenceImage(data=data, mime_type=row.mime_type, role=row.role, name=row.name)
