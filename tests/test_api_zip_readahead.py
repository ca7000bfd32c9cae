"""The streamed export reads its files ahead of their turn: every member still reads back byte for
byte, in order, and no descriptor is left open, whether the zip is read to the end or dropped. Its
length is worked out before the first byte, and a file that changes meanwhile ends it, named."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.api import streaming
from pipeline.api.streaming import sources, zip_body
from pipeline.errors import ExportError
from pipeline.store.objects import LocalStore


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def rows_of(root: Path, keys: list[str]) -> list[dict[str, Any]]:
    store = LocalStore(root, max_bytes=0)
    return [{"file": f"p{i:03d}/{Path(k).name}", "image_id": i, "_store": store, "_key": k} for i, k in enumerate(keys)]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    files = {f"results/p{i:03d}/iteration_1.jpg": os.urandom(100 + 997 * i) for i in range(2 * streaming.READ_AHEAD_FILES + 5)}
    for key, data in files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    return tmp_path, files


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_more_files_than_the_read_ahead_all_read_back_and_every_descriptor_is_closed(
        folder: tuple[Path, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    root, files = folder
    monkeypatch.setattr(streaming, "WHOLE_BYTES", 30_000)  # the larger ones are copied in pieces
    rows = rows_of(root, list(files))
    before = open_descriptors()
    data = b"".join(zip_body(rows, sources(rows), [1], "all").pieces)
    assert open_descriptors() == before
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [r["file"] for r in rows] + ["manifest.csv", "manifest.json"]
        assert [zf.read(r["file"]) for r in rows] == list(files.values())
    stopped = zip_body(rows, sources(rows), [1], "all").pieces
    next(stopped)  # a client that goes away after the first piece, files ahead of it open
    assert open_descriptors() > before
    stopped.close()
    assert open_descriptors() == before


def test_the_quick_path_of_a_file_is_the_one_its_store_gives(tmp_path: Path) -> None:
    keys = ["results/p000/iteration_1.jpg", "results//p001/./iteration_1.jpg", "results/p002/naïve é.png"]
    for key in keys:
        path = LocalStore(tmp_path, max_bytes=0).local_path(key)
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    rows = rows_of(tmp_path, keys)
    assert [m.path for m in sources(rows)] == [os.fspath(r["_store"].local_path(r["_key"])) for r in rows]


@pytest.mark.parametrize(("whole_bytes", "zip64_over"), [(1 << 24, 0xFFFFFFFF), (30_000, 0xFFFFFFFF), (30_000, 64)],
                         ids=["whole", "in-pieces", "zip64"])
def test_the_length_given_before_the_first_byte_is_the_zips(folder: tuple[Path, dict[str, bytes]], whole_bytes: int, zip64_over: int,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root, files = folder
    monkeypatch.setattr(streaming, "WHOLE_BYTES", whole_bytes)
    monkeypatch.setattr(streaming, "ZIP64_OVER", zip64_over)
    rows = rows_of(root, list(files))
    body = zip_body(rows, sources(rows), [1], "all")
    data = b"".join(body.pieces)
    assert body.length == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None and [zf.read(r["file"]) for r in rows] == list(files.values())


@pytest.mark.parametrize("change", ["shorter", "longer"])
def test_a_file_that_changes_during_the_export_ends_it_with_its_name(folder: tuple[Path, dict[str, bytes]], change: str) -> None:
    root, files = folder
    rows = rows_of(root, list(files))
    pieces = zip_body(rows, sources(rows), [1], "all").pieces
    last_key = list(files)[-1]
    old = files[last_key]
    (root / last_key).write_bytes(old[:100] if change == "shorter" else old + b"-more")  # rewritten after the length was given
    with pytest.raises(ExportError, match=rows[-1]["file"]):
        b"".join(pieces)
