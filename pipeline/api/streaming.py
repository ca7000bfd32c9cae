"""A zip written straight into the response: no file on disk, never whole in memory.

:class:`zipfile.ZipFile` writes into a sink that only collects bytes (it has no ``tell``/``seek``,
so each member is followed by a data descriptor); after each image the bytes collected so far
are handed to the response. Images are stored (they are compressed already), the manifests
deflated, exactly as :func:`pipeline.review.export.build_zip` writes them.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from typing import Any

from pipeline.review.export import add_image, add_manifests

FLUSH_BYTES = 4 << 20  # hand over at least this much at a time (fewer, larger writes to the socket)


class _Sink:
    """A write-only file: what zipfile writes is kept until taken."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.parts.append(data if isinstance(data, bytes) else bytes(data))
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        return data


def zip_stream(rows: list[dict[str, Any]], run_ids: list[int], selection: str, **header: Any) -> Iterator[bytes]:
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for row in rows:
            add_image(zf, row)
            if sink.size >= FLUSH_BYTES:
                yield sink.take()
        add_manifests(zf, rows, run_ids, selection, **header)
    yield sink.take()
