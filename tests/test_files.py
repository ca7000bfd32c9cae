"""Atomic writes and the checks every provider image passes before it is saved."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import BadImage
from pipeline.files import atomic_write_bytes, atomic_write_json, leftover_temp_files
from pipeline.images import inspect_image, make_thumbnail


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_atomic_write_replaces_the_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second version")
    assert target.read_bytes() == b"second version"
    assert leftover_temp_files(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "summary.json"
    atomic_write_json(target, {"v": 1})

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"v": 2})
    assert target.read_text() == '{\n  "v": 1\n}\n'
    assert leftover_temp_files(tmp_path) == []


def test_a_write_interrupted_mid_way_never_shows_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "iteration_1.png"
    real_fsync = os.fsync

    def crash_during_fsync(fd: int) -> None:
        real_fsync(fd)
        raise KeyboardInterrupt  # e.g. the user presses Ctrl-C at the worst moment

    monkeypatch.setattr(os, "fsync", crash_during_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, png())
    assert not target.exists()
    assert leftover_temp_files(tmp_path) == []


def test_inspect_image_identifies_format_size_and_hash() -> None:
    data = png((64, 48))
    info = inspect_image(data, claimed_mime="image/png")
    assert (info.format, info.mime_type, info.extension, info.width, info.height, info.byte_size) == ("PNG", "image/png", "png", 64, 48, len(data))


@pytest.mark.parametrize(
    "data, claimed, message",
    [
        (b"", None, "empty body"),
        (b'{"error": "quota"}', "application/json", "not a readable image"),
        (png()[:40], "image/png", "not a readable image"),
    ],
)
def test_garbage_is_refused(data: bytes, claimed: str | None, message: str) -> None:
    with pytest.raises(BadImage, match=message):
        inspect_image(data, claimed_mime=claimed)


def test_a_format_that_contradicts_the_claimed_type_is_refused() -> None:
    with pytest.raises(BadImage, match="said image/jpeg but the bytes are image/png"):
        inspect_image(png(), claimed_mime="image/jpeg")
    with pytest.raises(BadImage, match="content type text/html, not an image"):
        inspect_image(png(), claimed_mime="text/html")


def test_oversized_images_and_decompression_bombs_are_refused() -> None:
    with pytest.raises(BadImage, match="exceeds the limit of 1,000 pixels"):
        inspect_image(png((64, 48)), max_pixels=1_000)
    bomb = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(bomb, "PNG")  # 400 MP of zeros compresses to a few KB
    with pytest.raises(BadImage):
        inspect_image(bomb.getvalue())


def test_thumbnail_is_a_small_jpeg_or_webp_on_request() -> None:
    thumb = make_thumbnail(png((1200, 800)), side=320)
    with Image.open(io.BytesIO(thumb.data)) as t:
        assert (t.format, t.size, thumb.mime_type, thumb.width, thumb.height) == ("JPEG", (320, 213), "image/jpeg", 320, 213)
    webp = make_thumbnail(png((1200, 800)), side=320, fmt="WEBP")
    with Image.open(io.BytesIO(webp.data)) as t:
        assert (t.format, webp.mime_type) == ("WEBP", "image/webp")
