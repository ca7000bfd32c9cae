"""Prompt-set bundles (zip, folder, JSON beside its images): hostile ones are refused with the JSON
path of the field concerned, and nothing is written; good ones reach the run and survive a resume."""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import PromptSetInvalid
from pipeline.prompts.bundle import BundleLimits, load_source, load_upload
from pipeline.prompts.promptset import Limits
from pipeline.store.db import session
from pipeline.store.models import Iteration, PromptReference
from tests.bundle_samples import portrait, story_files, write_folder, write_zip
from tests.conftest import run_cli
from tests.test_dashboard import app  # noqa: F401, F811  (the AppTest fixture)

LIMITS = BundleLimits(max_bytes=5_000_000, max_files=50, max_ratio=100, reference_max_bytes=1_000_000, max_pixels=4_000_000)


def png(side: int = 64, colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(out, format="PNG")
    return out.getvalue()


def doc(*refs: Any) -> bytes:
    return json.dumps({"prompts": [{"id": "p1", "prompt": "A red square", "reference_images": list(refs)}]}).encode()


def zip_of(path: Path, files: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16  # how zip -y records a symbolic link
            z.writestr(info, target)
    return path


def problems(path: Path, limits: BundleLimits = LIMITS) -> dict[str, str]:
    with pytest.raises(PromptSetInvalid) as e:
        load_source(path, Limits(), limits)
    return {p.path: p.message for p in e.value.problems}


def test_a_zip_bundle_carries_its_images_with_their_roles(tmp_path: Path) -> None:
    face, style = png(colour=(10, 200, 10)), png(colour=(10, 10, 200))
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("faces/a.png", {"path": "./style//s.png", "role": "style"}),
                                         "faces/a.png": face, "style/s.png": style})
    spec = load_source(bundle, Limits(), LIMITS)
    refs = spec.prompts[0].all_references()
    assert [(r.path, r.role, r.read(), r.mime_type) for r in refs] == [
        ("faces/a.png", "subject", face, "image/png"), ("style/s.png", "style", style, "image/png")]
    # the same bundle as a folder, and as a JSON beside its images, reads the same
    folder = write_folder(tmp_path / "folder", {"prompts.json": doc("faces/a.png", {"path": "style/s.png", "role": "style"}),
                                                "faces/a.png": face, "style/s.png": style})
    assert [r.read() for r in load_source(folder, Limits(), LIMITS).prompts[0].all_references()] == [face, style]
    assert [r.read() for r in load_source(folder / "prompts.json", Limits(), LIMITS).prompts[0].all_references()] == [face, style]
    # a changed image is a different prompt set (the run's references must not be the old ones)
    other = zip_of(tmp_path / "c.zip", {"prompts.json": doc("faces/a.png", {"path": "style/s.png", "role": "style"}),
                                        "faces/a.png": png(colour=(1, 2, 3)), "style/s.png": style})
    assert load_source(other, Limits(), LIMITS).sha256 != spec.sha256


@pytest.mark.parametrize(("ref", "member", "expected"), [
    ("../outside.png", "outside.png", "leads out of the bundle"),
    ("/etc/passwd", "etc/passwd", "is an absolute path"),
    ("C:/Windows/x.png", "x.png", "is an absolute path"),
    ("faces\\a.png", "faces/a.png", "has a backslash"),
])
def test_paths_outside_the_bundle_are_refused_at_their_json_path(tmp_path: Path, ref: str, member: str, expected: str) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("ok.png", ref), "ok.png": png(), member: png()})
    found = problems(bundle)
    assert expected in found["prompts[0].reference_images[1]"]
    assert "prompts[0].reference_images[0]" not in found


@pytest.mark.parametrize("member", ["../evil.png", "/abs/evil.png", "a/../../evil.png"])
def test_a_member_named_outside_the_bundle_refuses_the_whole_bundle(tmp_path: Path, member: str) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("ok.png"), "ok.png": png(), member: png()})
    found = problems(bundle)
    assert list(found) == [""] and member in found[""]


def test_a_symlink_member_is_refused_where_it_is_named_and_where_it_is_not(tmp_path: Path) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("face.png")}, symlinks={"face.png": "/etc/passwd", "x.png": "/etc"})
    found = problems(bundle)
    assert "symbolic link" in found["prompts[0].reference_images[0]"]
    assert "x.png" in found[""] and "symbolic link" in found[""]


def test_a_symlink_in_a_folder_bundle_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png())
    folder = write_folder(tmp_path / "folder", {"prompts.json": doc("faces/a.png", "linked/b.png"), "faces/a.png": png()})
    os.symlink(secret, folder / "faces" / "link.png")
    os.symlink(tmp_path, folder / "linked")
    (folder / "prompts.json").write_bytes(doc("faces/link.png", "linked/secret.png"))
    found = problems(folder)
    assert "symbolic link" in found["prompts[0].reference_images[0]"]
    assert "symbolic link" in found["prompts[0].reference_images[1]"]


def test_a_file_that_is_not_an_image_is_refused_at_its_json_path(tmp_path: Path) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("ok.png", {"path": "notes.png", "role": "style"}),
                                         "ok.png": png(), "notes.png": b"just some text, not a picture"})
    found = problems(bundle)
    assert list(found) == ["prompts[0].reference_images[1].path"]
    assert '"notes.png" is not an image' in found["prompts[0].reference_images[1].path"]


def test_a_missing_file_is_named_with_its_json_path(tmp_path: Path) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": json.dumps({
        "characters": [{"id": "ada", "name": "Ada", "reference_images": ["faces/ada.png"]}],
        "prompts": [{"id": "p1", "prompt": "Ada waves", "characters": ["ada"]}]}).encode()})
    assert problems(bundle) == {"characters[0].reference_images[0]": '"faces/ada.png" is not in the bundle'}


def test_decompression_bombs_are_refused(tmp_path: Path) -> None:
    # a member that unpacks far beyond its packed size (20 MB of zeros deflate to ~20 kB)
    bomb = zip_of(tmp_path / "ratio.zip", {"prompts.json": doc("bomb.png"), "bomb.png": b"\0" * 20_000_000})
    assert "decompression bomb" in problems(bomb)["prompts[0].reference_images[0]"]
    # an image whose pixels are over the limit, however small its file
    big = io.BytesIO()
    Image.new("1", (3000, 3000)).save(big, format="PNG")
    pixels = zip_of(tmp_path / "pixels.zip", {"prompts.json": doc("big.png"), "big.png": big.getvalue()})
    relaxed = BundleLimits(**{**LIMITS.__dict__, "max_ratio": 100_000})
    assert "exceeds the limit of 4,000,000 pixels" in problems(pixels, relaxed)["prompts[0].reference_images[0]"]
    # a bundle whose members add up to more than the total cap
    many = {f"img{i}.png": portrait((i * 40, 90, 90), str(i)) for i in range(5)}
    total = zip_of(tmp_path / "total.zip", {"prompts.json": doc(*many), **many})
    small = BundleLimits(**{**LIMITS.__dict__, "max_bytes": 3_000})
    assert "over the limit of 3,000" in problems(total, small)[""]


def test_a_zip_header_that_understates_a_size_gets_no_more_bytes_through(tmp_path: Path) -> None:
    path = zip_of(tmp_path / "b.zip", {"prompts.json": doc("a.png"), "a.png": os.urandom(300_000)})
    raw = bytearray(path.read_bytes())
    # declare a.png as 1,000 bytes in its local and central headers (uncompressed size fields)
    local = raw.find(b"PK\x03\x04", raw.find(b"PK\x03\x04") + 1)
    central = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 1)
    raw[local + 22:local + 26] = raw[central + 24:central + 28] = (1000).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    found = problems(path)
    assert list(found) == [""] and "damaged" in found[""] and "a.png" in found[""]


def test_too_many_files_and_no_json_are_refused(tmp_path: Path) -> None:
    crowded = zip_of(tmp_path / "many.zip", {"prompts.json": doc(), **{f"f{i}.txt": b"x" for i in range(60)}})
    assert "61 files, over the limit of 50" in problems(crowded)[""]
    empty = zip_of(tmp_path / "nojson.zip", {"a.png": png()})
    assert "one prompt-set JSON at its root" in problems(empty)[""]
    notzip = tmp_path / "fake.zip"
    notzip.write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a zip file" in problems(notzip)[""]


def test_a_json_upload_cannot_name_images_but_a_zip_upload_can(tmp_path: Path) -> None:
    with pytest.raises(PromptSetInvalid) as e:
        load_upload(doc("a.png"), "set.json", Limits(), LIMITS)
    assert "upload a zip bundle" in e.value.problems[0].message and e.value.problems[0].path == "prompts[0].reference_images[0]"
    raw = zip_of(tmp_path / "u.zip", {"prompts.json": doc("a.png"), "a.png": png()}).read_bytes()
    assert load_upload(raw, "upload.zip", Limits(), LIMITS).prompts[0].all_references()[0].mime_type == "image/png"


@pytest.mark.parametrize("kind", ["traversal", "symlink", "non_image", "bomb", "missing"])
def test_the_cli_refuses_a_hostile_bundle_and_writes_nothing(tmp_path: Path, isolated_data_dir: Path, kind: str) -> None:
    files: dict[str, bytes] = {"prompts.json": doc("a.png")}
    links: dict[str, str] = {}
    if kind == "traversal":
        files["prompts.json"] = doc("../a.png")
    elif kind == "symlink":
        links["a.png"] = "/etc/passwd"
    elif kind == "non_image":
        files["a.png"] = b"%PDF-1.4 not an image"
    elif kind == "bomb":
        files["a.png"] = b"\0" * 30_000_000
    bundle = zip_of(tmp_path / "hostile.zip", files, symlinks=links)
    out = tmp_path / "out"
    result = run_cli("run", bundle, "--output", out)
    assert result.code == 2
    assert "prompts[0].reference_images[0]" in result.err
    assert not isolated_data_dir.exists() and not out.exists()  # no database, no reference store, no output


def test_the_story_bundle_runs_end_to_end_on_the_offline_stack(tmp_path: Path, settings: Settings, engine: Any) -> None:
    bundle = write_zip(tmp_path / "story.zip", story_files())
    result = run_cli("run", bundle, "--output", tmp_path / "out", "--iterations", "1")
    assert result.code == 0, result.err
    assert "12 completed, 0 failed, 0 blocked of 12 prompts" in result.out
    with session(engine) as s:
        refs = s.exec(select(PromptReference)).all()
        iterations = s.exec(select(Iteration)).all()
    # every page: the style image plus one face per character shown, stored once each by content
    assert len(refs) == 12 + sum(len(cast) for _, _, cast in __import__("tests.bundle_samples").bundle_samples.PAGES)
    assert len({r.sha256 for r in refs}) == 6
    for r in refs:
        assert (settings.data_dir / r.path).is_file()
    by_text = {it.prompt_text for it in iterations}
    assert any(t.startswith("Page 12. Everyone shares cocoa") and "Pip (tiny robot, copper body, one round green eye)" in t
               and t.endswith("Style: soft watercolour picture-book illustration, muted palette, gentle ink outlines.")
               for t in by_text)
    assert all(it.routing["served_by"] == "offline" for it in iterations)


def test_a_bundle_changed_between_check_and_launch_is_refused_at_the_images_path(tmp_path: Path) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("a.png"), "a.png": png()})
    ref = load_source(bundle, Limits(), LIMITS).prompts[0].all_references()[0]
    zip_of(bundle, {"prompts.json": doc("a.png"), "a.png": png(colour=(0, 0, 0))})
    with pytest.raises(PromptSetInvalid) as e:
        ref.read()
    assert e.value.problems[0].path == "prompts[0].reference_images[0]" and "changed after the bundle was checked" in str(e.value)
    bundle.unlink()
    with pytest.raises(PromptSetInvalid, match="can no longer be read from the bundle"):
        ref.read()


def test_a_zip_read_from_an_open_file_reads_its_images_again_from_it(tmp_path: Path) -> None:
    """An upload spooled to a file (the API's way): the file stays the caller's, open, and is read again at launch."""
    from pipeline.prompts.bundle import load_zip

    bundle = zip_of(tmp_path / "b.zip", {"prompts.json": doc("a.png"), "a.png": png(colour=(9, 9, 9))})
    with bundle.open("rb") as f:
        ref = load_zip(f, "upload.zip", Limits(), LIMITS).prompts[0].all_references()[0]
        assert not f.closed
        assert ref.read() == png(colour=(9, 9, 9))


def test_new_run_takes_a_zip_upload_previews_its_characters_and_images_and_launches(app: Any, tmp_path: Path) -> None:  # noqa: F811
    from tests.test_dashboard import settled_run

    at = app("new_run")
    hostile = zip_of(tmp_path / "h.zip", {"prompts.json": doc("../a.png")}).read_bytes()
    at.file_uploader[0].set_value(("h.zip", hostile, "application/zip")).run()
    assert not at.exception and "nothing was saved" in at.error[0].value
    assert at.dataframe[0].value["where (JSON path)"].tolist() == ["prompts[0].reference_images[0]"]

    at.file_uploader[0].set_value(("story.zip", write_zip(tmp_path / "s.zip", story_files()).read_bytes(), "application/zip")).run()
    assert not at.exception
    preview = at.dataframe[0].value
    assert len(preview) == 12 and preview["characters"][0] == "Mira, Tobi"
    assert preview["reference images"][0] == "style/watercolour.png (style), characters/mira.png (subject), characters/tobi.png (subject)"
    assert preview["sent to the provider"][0].startswith("Page 1. Mira finds a fox cub")
    [launch] = [b for b in at.button if b.label == "Launch run"]
    launch.click().run()
    assert not at.exception
    run = settled_run()
    assert (run.status, run.completed, run.total) == ("completed", 12, 12)


def test_the_avatar_bundle_runs_from_a_folder_with_each_personas_base_image(tmp_path: Path, engine: Any) -> None:
    from tests.bundle_samples import PERSONAS, avatar_files

    folder = write_folder(tmp_path / "avatars", avatar_files())
    result = run_cli("run", folder, "--output", tmp_path / "out", "--iterations", "1")
    assert result.code == 0, result.err
    with session(engine) as s:
        refs = s.exec(select(PromptReference).order_by(PromptReference.prompt_id)).all()
        its = s.exec(select(Iteration).order_by(Iteration.id)).all()
    assert [(r.name, r.role) for r in refs] == [(f"base/{pid}.png", "subject") for pid, *_ in PERSONAS]
    assert any(it.prompt_text.startswith("Avatar of a woman barista, 31, loves climbing") for it in its)
    grids = {it.id: it for it in its if it.operation == "edit"}  # each persona: two 2x2 grids edited from its base image ...
    cells = [it for it in its if it.operation == "grid-cell"]  # ... split into 8 images, each with its grid as parent
    assert len(grids) == 2 * len(PERSONAS) and len(cells) == 8 * len(PERSONAS)
    assert all(len(c.parent_ids) == 1 and c.parent_ids[0] in grids and c.cell_index in (1, 2, 3, 4) for c in cells)
    for item in {g.run_item_id for g in grids.values()}:
        assert sum(1 for c in cells if grids[c.parent_ids[0]].run_item_id == item) == 8


def test_a_zip_of_a_folder_reads_from_inside_that_folder(tmp_path: Path) -> None:
    bundle = zip_of(tmp_path / "b.zip", {"story/prompts.json": doc("faces/a.png"), "story/faces/a.png": png()})
    assert [r.read() for r in load_source(bundle, Limits(), LIMITS).prompts[0].all_references()] == [png()]
