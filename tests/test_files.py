"""Atomic writes and the checks every provider image passes before it is saved."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import BadImage, DiskFull, InputError, StorageUnwritable, human_bytes
from pipeline.files import (
    atomic_write_bytes,
    atomic_write_json,
    check_writable_folder,
    leftover_temp_files,
    storage_error,
)
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


# ---- storage errors: a full disk or a read-only folder is named, never a bare OSError ---------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_named_with_the_path_and_the_space_needed(code: int, tmp_path: Path) -> None:
    error = storage_error(OSError(code, os.strerror(code), str(tmp_path / "a.png")), needed=2_500_000)
    assert isinstance(error, DiskFull) and not isinstance(error, InputError)
    assert str(error).startswith(f"disk full: cannot write to {tmp_path / 'a.png'} (about 2.5 MB needed, ")
    assert "free there" in str(error)


@pytest.mark.parametrize("code, reason", [(errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied")])
def test_a_read_only_place_is_an_input_error_naming_it(code: int, reason: str, tmp_path: Path) -> None:
    error = storage_error(OSError(code, os.strerror(code), str(tmp_path)))
    assert isinstance(error, StorageUnwritable) and isinstance(error, InputError)  # the CLI's exit 2
    assert str(error).startswith(f"cannot write {tmp_path}: {reason}") and "DARKROOM_DATA_DIR" in str(error)


def test_other_os_errors_are_left_as_they_are() -> None:
    assert storage_error(OSError(errno.EIO, "Input/output error")) is None
    assert storage_error(FileNotFoundError(errno.ENOENT, "No such file")) is None


@pytest.mark.parametrize("fails_at", ["open", "write", "rename"])
def test_an_atomic_write_on_a_full_disk_raises_disk_full_and_leaves_the_old_file(fails_at: str, tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "iteration_1.png"
    atomic_write_bytes(target, b"old")
    no_space = OSError(errno.ENOSPC, "No space left on device")

    def fail(*_args: object, **_kwargs: object) -> None:
        raise no_space

    if fails_at == "open":
        monkeypatch.setattr("pipeline.files._open_temp", fail)
    elif fails_at == "write":
        monkeypatch.setattr(os, "fsync", fail)
    else:
        monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(DiskFull, match=f"cannot write to {target} \\(about 3 bytes needed"):
        atomic_write_bytes(target, png()[:3])
    assert target.read_bytes() == b"old"
    assert leftover_temp_files(tmp_path) == []


def test_check_writable_folder_creates_it_and_leaves_nothing_behind(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "data"
    check_writable_folder(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []


def test_human_bytes_reads_like_a_person_would_say_it() -> None:
    assert [human_bytes(n) for n in (0, 999, 1_500, 2_500_000, 3_200_000_000, None)] == [
        "0 bytes", "999 bytes", "1.5 KB", "2.5 MB", "3.2 GB", "?"]
