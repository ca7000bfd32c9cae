"""S3-compatible image storage, against a real S3 server on loopback (moto's server behind
tests/emulators/s3gateway.py, which checks integrity headers as S3 does and misbehaves on demand).

Covers the store itself (upload, download, range, listing, missing, permission denied, a slow and
a failing endpoint, an upload that breaks off or arrives damaged), then a whole offline run with
DARKROOM_STORAGE_URL set, the Review page's image, and the exports (zip streamed from the bucket,
and the "S3 prefix" target).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import boto3
import pytest
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import ObjectMissing, StorageError
from pipeline.redaction import redact
from pipeline.store.models import Iteration
from pipeline.store.objects import StorageOptions, bucket_store, parse_bucket_url
from tests.conftest import SAMPLES, run_cli
from tests.emulators.s3gateway import S3Gateway

KEY_ID, SECRET = "darkroom-test-key-id", "not-a-real-secret-just-for-tests"
FAST = StorageOptions(connect_timeout_s=5.0, read_timeout_s=5.0, max_attempts=2, max_object_mb=5)  # roomy for a loaded CI
TIMES_OUT = replace(FAST, connect_timeout_s=1.0, read_timeout_s=0.5)  # where a timeout is the point: under the slow fault


@pytest.fixture(scope="module")
def gateway() -> Iterator[S3Gateway]:
    g = S3Gateway().start()
    yield g
    g.stop()


@pytest.fixture
def bucket(gateway: S3Gateway, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the loopback server, with the AWS_* environment pointing at the gateway."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", gateway.url)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    gateway.set_fault("ok")
    name = f"darkroom-{uuid4().hex[:12]}"
    direct().create_bucket(Bucket=name)
    return name


def direct():  # a plain client through the gateway (setting up buckets, removing an object behind Darkroom's back)
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)


def held(gateway: S3Gateway, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = boto3.client("s3", endpoint_url=gateway.moto_url, region_name="us-east-1", aws_access_key_id=KEY_ID,
                          aws_secret_access_key=SECRET)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def store(bucket: str, prefix: str = "team", options: StorageOptions = FAST):  # type: ignore[no-untyped-def]
    return bucket_store(parse_bucket_url(f"s3://{bucket}/{prefix}"), options)


# ---- the store -----------------------------------------------------------------------------------------------
def test_upload_download_range_list_and_delete(gateway: S3Gateway, bucket: str) -> None:
    s = store(bucket)
    data = bytes(range(256)) * 40
    s.put("results/p1/iteration_1.png", data, sha256=hashlib.sha256(data).hexdigest())
    s.put("results/p1/summary.json", b"{}\n")
    assert held(gateway, bucket)["team/results/p1/iteration_1.png"] == data
    assert s.get("results/p1/iteration_1.png") == data
    assert s.read_range("results/p1/iteration_1.png", 10, 20) == data[10:20]
    assert b"".join(s.chunks("results/p1/iteration_1.png")) == data
    info = s.info("results/p1/iteration_1.png")
    assert info is not None and info.size == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert [o.key for o in s.listing("results/p1/")] == ["results/p1/iteration_1.png", "results/p1/summary.json"]
    s.delete("results/p1/summary.json")
    assert s.info("results/p1/summary.json") is None
    put = [p for m, p in gateway.calls("PUT") if p.endswith("iteration_1.png")]
    assert put, "the upload went through the gateway, which checked its Content-MD5 and SHA-256"


def test_purge_removes_everything_under_a_prefix_in_batches(gateway: S3Gateway, bucket: str, tmp_path: Path) -> None:
    from pipeline.store.objects import LocalStore

    s = store(bucket)
    for i in range(1005):  # more than one DeleteObjects request holds
        s.put(f"results/p{i % 3}/o{i}.json", b"{}\n")
    s.put("other/keep.json", b"{}\n")
    before = len(gateway.calls("POST", "?delete"))
    assert s.purge("results/") == (1005, 1005 * 3)
    assert len(gateway.calls("POST", "?delete")) - before == 2
    assert list(held(gateway, bucket)) == ["team/other/keep.json"]
    local = LocalStore(tmp_path / "run", max_bytes=FAST.max_bytes)
    local.put("results/p1/a.png", b"abc")
    local.put("keep.txt", b"x")
    assert local.purge("results/") == (1, 3) and [o.key for o in local.listing()] == ["keep.txt"]


def test_a_missing_object_is_named(bucket: str) -> None:
    s = store(bucket)
    with pytest.raises(ObjectMissing, match=rf"s3://{bucket}/team/results/p9/iteration_1.png is missing"):
        s.get("results/p9/iteration_1.png")
    assert s.info("results/p9/iteration_1.png") is None


def test_permission_denied_says_what_to_check_and_never_shows_the_secret(gateway: S3Gateway, bucket: str) -> None:
    gateway.set_fault("deny")
    with pytest.raises(StorageError) as caught:
        store(bucket).put("results/p1/iteration_1.png", b"image bytes")
    message = str(caught.value)
    assert "permission denied (AccessDenied)" in message and "AWS_ACCESS_KEY_ID" in message
    assert SECRET not in message
    assert redact(f"signed with {SECRET}") == "signed with [AWS_SECRET_ACCESS_KEY redacted]"
    gateway.set_fault("ok")
    assert "team/results/p1/iteration_1.png" not in held(gateway, bucket)


def test_a_failing_endpoint_is_retried_then_gives_a_clear_error(gateway: S3Gateway, bucket: str) -> None:
    s = store(bucket)
    gateway.set_fault("500", count=1)  # one 500, then fine: the retry succeeds
    s.put("results/p1/a.png", b"first")
    assert len(gateway.calls("PUT", "/a.png")) == 2 and s.get("results/p1/a.png") == b"first"
    gateway.set_fault("500")
    with pytest.raises(StorageError, match=r"answered 500 InternalError 2 time\(s\) in a row; try again later"):
        s.put("results/p1/b.png", b"second")
    assert len(gateway.calls("PUT", "/b.png")) == FAST.max_attempts


def test_a_slow_endpoint_times_out_within_the_configured_bound(gateway: S3Gateway, bucket: str) -> None:
    gateway.slow_s = 3.0
    gateway.set_fault("slow")
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"did not answer within 0.5 s \(2 attempt\(s\)\).*read_timeout_s"):
        store(bucket, options=TIMES_OUT).get("results/p1/a.png")
    assert time.monotonic() - started < 2.5  # two tries of 0.5 s and a backoff, not the endpoint's 3 s each


def test_an_upload_that_breaks_off_or_arrives_damaged_is_never_visible(gateway: S3Gateway, bucket: str) -> None:
    s = store(bucket)
    data = b"\x89PNG" + b"x" * 50_000
    gateway.set_fault("cut")
    with pytest.raises(StorageError):
        s.put("results/p1/iteration_1.png", data)
    gateway.set_fault("corrupt")
    with pytest.raises(StorageError, match="BadDigest"):
        s.put("results/p1/iteration_2.png", data)
    gateway.set_fault("ok")
    assert held(gateway, bucket) == {}
    with pytest.raises(StorageError, match="do not match their recorded SHA-256"):
        s.put("results/p1/iteration_3.png", data, sha256="0" * 64)
    assert held(gateway, bucket) == {}


def test_objects_larger_than_the_limit_are_refused_both_ways(gateway: S3Gateway, bucket: str) -> None:
    big = b"x" * 6_000_000
    with pytest.raises(StorageError, match="max_object_mb"):
        store(bucket).put("big.bin", big)
    store(bucket, options=StorageOptions(max_object_mb=10)).put("big.bin", big)
    with pytest.raises(StorageError, match="max_object_mb"):
        store(bucket).get("big.bin")


def test_a_bad_storage_url_is_named() -> None:
    from pipeline.errors import ConfigError

    for url in ("https://bucket/x", "s3://", "s3://key:secret@bucket/x", "s3://bucket/../x"):
        with pytest.raises(ConfigError, match="DARKROOM_STORAGE_URL"):
            parse_bucket_url(url)
        with pytest.raises(ConfigError, match="DARKROOM_STORAGE_URL: .* is not an S3 location") as caught:
            Settings.from_env({"DARKROOM_STORAGE_URL": url})
        assert "secret" not in str(caught.value)  # a URL with keys in it is not repeated
    assert Settings.from_env({"DARKROOM_STORAGE_URL": "s3://bucket/team/a"}).storage_url == "s3://bucket/team/a"
    assert Settings.from_env({}).storage_url == ""


# ---- a run, the review page, the exports ------------------------------------------------------------------------
@pytest.fixture
def bucket_run(gateway: S3Gateway, bucket: str, monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path) -> str:
    """A finished offline run of the seed set with DARKROOM_STORAGE_URL set (data folder for the database only)."""
    monkeypatch.setenv("DARKROOM_STORAGE_URL", f"s3://{bucket}/studio")
    result = run_cli("run", SAMPLES / "seed.json", "--iterations", "2")
    assert result.code == 0, result.out + result.err
    assert f"Results: s3://{bucket}/studio/runs/1/results" in result.out
    return bucket


def test_a_run_keeps_its_images_sidecars_and_summaries_in_the_bucket(gateway: S3Gateway, bucket_run: str,
                                                                   isolated_data_dir: Path, engine) -> None:  # type: ignore[no-untyped-def]
    objects = held(gateway, bucket_run, "studio/runs/1/results/")
    with engine.connect() as c:
        rows = [r for r in c.execute(select(Iteration.image_path, Iteration.sha256, Iteration.number).where(Iteration.status == "ok"))]
    assert rows
    for image_path, sha, number in rows:
        data = objects[f"studio/runs/1/{image_path}"]
        assert hashlib.sha256(data).hexdigest() == sha  # the DB records the hash of exactly what the bucket holds
        folder = f"studio/runs/1/{Path(image_path).parent.as_posix()}"
        results = json.loads(objects[f"{folder}/iteration_{number}_results.json"])
        assert results["sha256"] == sha
        assert f"{folder}/iteration_{number}_evaluation.json" in objects
        assert json.loads(objects[f"{folder}/summary.json"])["iterations"]
    on_disk = [p for p in (isolated_data_dir / "runs").rglob("*") if p.is_file()] if (isolated_data_dir / "runs").exists() else []
    assert not [p for p in on_disk if p.suffix in (".png", ".jpg", ".jpeg", ".webp") or p.name.startswith("iteration_")]


def test_a_resumed_prompt_checks_its_images_in_the_bucket_and_remakes_only_a_lost_one(
        gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]
    from pipeline.store.db import session
    from pipeline.store.models import RunItem

    with session(engine) as s:
        for item in s.exec(select(RunItem).where(RunItem.run_id == 1)):  # a prompt with two images
            its = {it.number: it for it in s.exec(select(Iteration).where(Iteration.run_item_id == item.id, Iteration.status == "ok"))}
            if len(its) == 2:
                break
        item.status = "failed"  # so that --retry-failed takes this prompt up again
        s.add(item)
        s.commit()
    assert sorted(its) == [1, 2]
    lost = f"studio/runs/1/{its[1].image_path}"
    direct().delete_object(Bucket=bucket_run, Key=lost)
    before = len(gateway.requests)
    result = run_cli("resume", "1", "--retry-failed")
    assert result.code == 0, result.out + result.err
    since = gateway.requests[before:]
    images = [(m, p.split("?")[0]) for m, p in since if not p.split("?")[0].endswith(".json") and "/results/" in p]
    assert ("PUT", f"/{bucket_run}/{lost}") in images  # the lost image was made again …
    assert hashlib.sha256(held(gateway, bucket_run, lost)[lost]).hexdigest() == its[1].sha256  # (deterministic offline renderer)
    others = [(m, p) for m, p in images if p != f"/{bucket_run}/{lost}"]
    assert others and all(m == "HEAD" for m, p in others)  # … the others were checked by their recorded hash, not downloaded or rewritten


def test_review_reads_full_images_through_the_store(gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]
    from pipeline.review.gallery import image_object
    from pipeline.store.db import session

    with session(engine) as s:
        it = s.exec(select(Iteration).where(Iteration.status == "ok")).first()
        assert it is not None and it.id is not None
        source, key = image_object(s, Settings.from_env(), it.id)
    assert source.local_path(key) is None
    assert hashlib.sha256(source.get(key)).hexdigest() == it.sha256
    from pipeline.runs.records import get_run
    from pipeline.store.objects import open_image, read_range

    with session(engine) as s:
        run = get_run(s, 1)
    info, chunks = open_image(Settings.from_env(), run, key)  # what the API and the doctor call
    data = b"".join(chunks)
    assert info.size == len(data) == it.byte_size and hashlib.sha256(data).hexdigest() == it.sha256
    assert read_range(Settings.from_env(), run, key, 100, 200) == data[100:200]
    with pytest.raises(ObjectMissing):
        open_image(Settings.from_env(), run, "results/nope/iteration_1.png")


def test_export_zip_streams_from_the_bucket(gateway: S3Gateway, bucket_run: str, tmp_path: Path) -> None:
    dest = tmp_path / "out.zip"
    result = run_cli("export", "1", "--out", dest)
    assert result.code == 0, result.out + result.err
    objects = held(gateway, bucket_run, "studio/runs/1/results/")
    with zipfile.ZipFile(dest) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        for row in manifest["images"]:
            data = zf.read(row["file"])
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
            assert data in objects.values()
    assert manifest["images"]


def test_export_to_an_s3_prefix_uploads_images_and_manifest(gateway: S3Gateway, bucket_run: str) -> None:
    direct().create_bucket(Bucket=f"{bucket_run}-out")
    result = run_cli("export", "1", "--to", f"s3://{bucket_run}-out/deliveries/seed", "--best")
    assert result.code == 0, result.out + result.err
    sent = held(gateway, f"{bucket_run}-out")
    manifest = json.loads(sent["deliveries/seed/manifest.json"])
    assert manifest["selection"] == "best" and manifest["images"]
    for row in manifest["images"]:
        assert hashlib.sha256(sent[f"deliveries/seed/{row['file']}"]).hexdigest() == row["sha256"]
    assert "deliveries/seed/manifest.csv" in sent
    assert "Uploaded to s3://" in result.out


def test_an_export_to_a_denied_prefix_names_the_problem_and_writes_no_manifest(gateway: S3Gateway, bucket_run: str) -> None:
    direct().create_bucket(Bucket=f"{bucket_run}-out")
    gateway.set_fault("deny")
    result = run_cli("export", "1", "--to", f"s3://{bucket_run}-out/x")
    gateway.set_fault("ok")
    assert result.code != 0 and "permission denied" in result.err + result.out
    assert "Traceback" not in result.err
    assert "x/manifest.json" not in held(gateway, f"{bucket_run}-out")


def test_local_storage_stays_the_default_with_the_same_files(tmp_path: Path, isolated_data_dir: Path) -> None:
    assert run_cli("run", SAMPLES / "seed.json", "--iterations", "1").code == 0
    folder = isolated_data_dir / "runs" / "1" / "results"
    images = [p for p in folder.rglob("iteration_1.*") if not p.name.endswith(".json")]
    assert images and all((p.parent / "summary.json").is_file() for p in images)
    assert (json.loads((images[0].parent / "iteration_1_results.json").read_text())["sha256"]
            == hashlib.sha256(images[0].read_bytes()).hexdigest())


def test_the_export_page_uploads_to_an_s3_prefix(gateway: S3Gateway, bucket_run: str) -> None:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.conftest import ROOT

    direct().create_bucket(Bucket=f"{bucket_run}-page")
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30)
        at.run()
        at.switch_page("pages/export.py").run()
        at.radio(key="export_selection").set_value("all").run()
        at.radio(key="export_target").set_value("s3").run()
        assert not [b for b in at.button if b.label == "Build zip"]  # one target at a time
        at.text_input(key="export_s3_url").set_value(f"s3://{bucket_run}-page/review").run()
        next(b for b in at.button if b.label == "Upload to the bucket").click().run()
        assert not at.exception, [e.value for e in at.exception]
        assert "uploaded" in at.success[0].value
        sent = held(gateway, f"{bucket_run}-page")
        assert "review/manifest.json" in sent
        manifest = json.loads(sent["review/manifest.json"])
        assert f"{len(manifest['images'])} image(s)" in at.success[0].value
        assert all(f"review/{row['file']}" in sent for row in manifest["images"])
    finally:
        st.cache_resource.clear()


@pytest.mark.sqlite_only  # loses the SQLite file; on PostgreSQL the rows stay
def test_a_fresh_database_never_writes_over_the_objects_of_an_old_one(gateway: S3Gateway, bucket_run: str,
                                                                     isolated_data_dir: Path) -> None:
    before = held(gateway, bucket_run, "studio/runs/1/")
    for f in isolated_data_dir.glob("darkroom.db*"):
        f.unlink()  # the database is lost; the bucket keeps run 1's images
    result = run_cli("run", SAMPLES / "seed.json", "--iterations", "1")
    assert result.code == 0, result.out + result.err
    assert held(gateway, bucket_run, "studio/runs/1/") == before  # untouched
    assert any(k.endswith("summary.json") for k in held(gateway, bucket_run, "studio/runs/1-2/results/"))


def test_the_api_serves_images_from_the_bucket_whole_by_range_and_says_when_one_is_gone(
        gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]
    from pipeline.store.db import session
    from tests.apiserver import client, serving

    with session(engine) as s:
        first, second = list(s.exec(select(Iteration).where(Iteration.status == "ok").order_by(Iteration.id)))[:2]
    whole = held(gateway, bucket_run, f"studio/runs/1/{first.image_path}")[f"studio/runs/1/{first.image_path}"]
    with serving(Settings.from_env(), engine, runner=False) as base, client(base, engine, "api-reader", "reviewer") as http:
        r = http.get(f"/v1/images/{first.id}")
        assert r.status_code == 200 and r.content == whole and r.headers["etag"] == f'"{first.sha256}"'
        assert r.headers["content-type"] == first.mime_type
        part = http.get(f"/v1/images/{first.id}", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == whole[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(whole)}"
        assert http.get(f"/v1/images/{first.id}", headers={"Range": "bytes=-16"}).content == whole[-16:]
        assert http.get(f"/v1/images/{first.id}", headers={"Range": f"bytes={len(whole)}-"}).status_code == 416
        assert http.get(f"/v1/images/{first.id}", headers={"If-None-Match": f'"{first.sha256}"'}).status_code == 304
        direct().delete_object(Bucket=bucket_run, Key=f"studio/runs/1/{second.image_path}")
        gone = http.get(f"/v1/images/{second.id}")
        assert gone.status_code == 404 and "missing from storage" in gone.json()["detail"]
