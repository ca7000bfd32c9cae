"""The streamed export's zip writer: what any unzip tool reads back, ZIP64 included.

The API writes its export zip by hand (pipeline.api.streaming); these check that zipfile reads
every member back byte for byte with its CRC, for whole members, members copied in pieces
(with a data descriptor) and with the ZIP64 records forced on small sizes; and an export
streamed from a bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from pipeline.api.streaming import ZipWriter, _file_pieces
from pipeline.config import Settings
from pipeline.store.db import open_database
from tests.apiserver import client, serving
from tests.emulators.s3gateway import S3Gateway
from tests.test_object_storage import bucket, bucket_run, direct, gateway, held  # noqa: F401 (fixtures)

MEMBERS = {"p000/iteration_1.jpg": os.urandom(70_000), "p000/iteration_2.jpg": b"", "p001/naïve é.png": os.urandom(3_000)}
MANIFEST = ("run_id,prompt_id\n" + "1,p000\n" * 500).encode()


def written(z: ZipWriter, big: Path) -> bytes:
    for name, data in MEMBERS.items():
        z.add_bytes(name, data, at=1_700_000_000.0)
    out = [z.take()]
    out += [z.take() for _ in z.add_pieces("p002/large.jpg", _file_pieces(str(big)), at=1_700_000_000.0)]
    z.add_bytes("manifest.csv", MANIFEST, at=1_700_000_000.0, deflate=True)
    z.finish()
    return b"".join(out) + z.take()


@pytest.mark.parametrize("zip64_over", [0xFFFFFFFF, 64], ids=["classic", "zip64"])
def test_every_member_reads_back_byte_for_byte(tmp_path: Path, zip64_over: int) -> None:
    big = tmp_path / "large.jpg"
    big.write_bytes(os.urandom(3 << 20))  # three pieces of 1 MiB
    data = written(ZipWriter(zip64_over=zip64_over), big)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None  # every CRC matches
        assert zf.namelist() == [*MEMBERS, "p002/large.jpg", "manifest.csv"]
        for name, content in MEMBERS.items():
            assert zf.read(name) == content and zf.getinfo(name).compress_type == zipfile.ZIP_STORED
        assert zf.read("p002/large.jpg") == big.read_bytes()
        info = zf.getinfo("manifest.csv")
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size < len(MANIFEST) and zf.read("manifest.csv") == MANIFEST
        assert info.date_time[0] == 2023
    if shutil.which("unzip"):  # a second reader (Info-ZIP), when installed
        path = tmp_path / "out.zip"
        path.write_bytes(data)
        check = subprocess.run(["unzip", "-tq", str(path)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


def test_zip64_records_appear_only_when_needed(tmp_path: Path) -> None:
    big = tmp_path / "large.jpg"
    big.write_bytes(b"x" * 1000)
    assert b"PK\x06\x06" not in written(ZipWriter(), big)[-200:]  # the classic end record alone
    assert b"PK\x06\x06" in written(ZipWriter(zip64_over=64), big)[-200:]


def test_a_run_in_a_bucket_streams_its_objects_and_a_missing_one_is_named_before_any_byte(
        gateway: S3Gateway, bucket_run: str) -> None:  # noqa: F811 (the fixtures imported above)
    settings = Settings.from_env()  # DARKROOM_STORAGE_URL is the bucket
    engine = open_database(settings)
    try:
        objects = held(gateway, bucket_run, "studio/runs/1/results/")
        with serving(settings, engine, runner=False) as base, client(base, engine, "rita", "reviewer") as c:
            r = c.get("/v1/runs/1/export.zip", params={"selection": "all"})
            assert r.status_code == 200, r.text
            assert r.headers.get("transfer-encoding") == "chunked"  # objects are not asked for their sizes first
            with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
                assert zf.testzip() is None
                rows = json.loads(zf.read("manifest.json"))["images"]
                assert rows and all(hashlib.sha256(zf.read(r["file"])).hexdigest() == r["sha256"] for r in rows)
                assert all(zf.read(r["file"]) in objects.values() for r in rows)
            gone = next(k for k in objects if k.endswith(".jpg"))
            direct().delete_object(Bucket=bucket_run, Key=gone)  # behind Darkroom's back
            r = c.get("/v1/runs/1/export.zip", params={"selection": "all"})
            assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
            assert gone.removeprefix("studio/runs/1/") in r.json()["detail"]
    finally:
        engine.dispose()
