"""delete, prune and the doctor with images in an S3-compatible bucket (DARKROOM_STORAGE_URL).

Against moto's server on loopback behind tests/emulators/s3gateway.py (the fixtures of
tests/test_object_storage.py): a deleted run's objects go and the others stay; pruned images'
objects go; the doctor finds a missing object, an image no row knows and a folder no run knows,
and moves the strays under ``orphans/``; a bucket that refuses (403) leaves the rows as they
were, or says where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import StorageError
from pipeline.runs import retention
from pipeline.store.db import session
from pipeline.store.models import Iteration, Run, RunItem
from tests.conftest import SAMPLES, run_cli
from tests.emulators.s3gateway import S3Gateway
from tests.test_object_storage import bucket, bucket_run, direct, gateway, held  # noqa: F401  (fixtures)


def images_of(engine, run_id: int) -> dict[int, str]:  # type: ignore[no-untyped-def]
    """Iteration id -> the image's key in the bucket, for the run's images the rows still point at."""
    with session(engine) as s:
        rows = s.exec(select(Iteration.id, Iteration.image_path).join(RunItem, RunItem.id == Iteration.run_item_id)  # type: ignore[arg-type]
                      .where(RunItem.run_id == run_id, Iteration.image_path != "")).all()
    return {int(i): f"studio/runs/{run_id}/{p}" for i, p in rows if i is not None}


def second_run() -> None:
    result = run_cli("run", SAMPLES / "seed.json", "--iterations", "1")
    assert result.code == 0, result.out + result.err


def test_delete_removes_the_runs_objects_in_batches_and_keeps_the_others(
        gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    second_run()
    assert held(gateway, bucket_run, "studio/runs/1/") and held(gateway, bucket_run, "studio/runs/2/")
    others = held(gateway, bucket_run, "studio/runs/2/")
    batches = len(gateway.calls("POST", "?delete"))
    result = run_cli("delete", "run", "1", "--yes")
    assert result.code == 0, result.out + result.err
    assert "in the bucket" in result.out
    assert held(gateway, bucket_run, "studio/runs/1/") == {}  # images, sidecars, summaries, run.json: all gone
    assert held(gateway, bucket_run, "studio/runs/2/") == others  # the other run's objects are untouched
    assert len(gateway.calls("POST", "?delete")) == batches + 1  # one DeleteObjects request, not one DELETE per object
    with session(engine) as s:
        assert s.get(Run, 1) is None and s.get(Run, 2) is not None
    assert run_cli("doctor").code == 0


def test_prune_deletes_the_pruned_images_objects_only(gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    second_run()
    doomed, kept = images_of(engine, 1), images_of(engine, 2)
    assert doomed and kept
    result = run_cli("prune", "--older-than", "0", "--run", "1")
    assert result.code == 0, result.out + result.err
    assert f"{len(doomed):,} image(s)" in result.out and "in the bucket" in result.out
    left = held(gateway, bucket_run, "studio/runs/")
    assert not set(doomed.values()) & set(left)  # the pruned images' objects are gone …
    assert set(kept.values()) <= set(left)  # … the other run's stay
    assert any(k.startswith("studio/runs/1/") and k.endswith("summary.json") for k in left)  # sidecars stay: prune removes images
    assert images_of(engine, 1) == {}
    assert run_cli("doctor").code == 0


def test_doctor_finds_a_missing_object_an_unknown_image_and_an_unknown_folder_and_repairs(
        gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    images = images_of(engine, 1)
    lost_id, lost = next(iter(images.items()))
    client = direct()
    client.delete_object(Bucket=bucket_run, Key=lost)
    client.put_object(Bucket=bucket_run, Key="studio/runs/1/results/stray/iteration_9.png", Body=b"not known")
    client.put_object(Bucket=bucket_run, Key="studio/runs/77/results/p/iteration_1.png", Body=b"an old database's")
    client.put_object(Bucket=bucket_run, Key="studio/runs/77/run.json", Body=b"{}")

    found = run_cli("doctor", "--no-hashes")
    assert found.code == 1, found.out + found.err
    assert f"missing     s3://{bucket_run}/{lost}" in found.out
    assert f"s3://{bucket_run}/studio/runs/1/results/stray/iteration_9.png  an image no row points at" in found.out
    assert f"s3://{bucket_run}/studio/runs/77/  2 object(s) in a folder no run of this database knows" in found.out
    assert "3 problem(s); 3 can be repaired" in found.out

    repaired = run_cli("doctor", "--repair")
    assert repaired.code == 0, repaired.out + repaired.err
    left = held(gateway, bucket_run, "studio/")
    assert "studio/orphans/runs/1/results/stray/iteration_9.png" in left  # moved, never deleted
    assert left["studio/orphans/runs/77/results/p/iteration_1.png"] == b"an old database's"
    assert not [k for k in left if k.startswith("studio/runs/77/")]
    with session(engine) as s:
        assert s.get_one(Iteration, lost_id).image_path == ""  # the row forgot the missing image, its record stays
    assert run_cli("doctor").code == 0


def test_doctor_compares_each_objects_recorded_sha256_with_its_row(gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    key = next(iter(images_of(engine, 1).values()))
    direct().put_object(Bucket=bucket_run, Key=key, Body=b"replaced", Metadata={"sha256": "0" * 64})
    before = len(gateway.calls("HEAD"))
    found = run_cli("doctor")
    assert found.code == 1 and f"hash        s3://{bucket_run}/{key}" in found.out
    assert len(gateway.calls("HEAD")) - before == len(images_of(engine, 1))  # one HEAD per image, nothing downloaded
    assert run_cli("doctor", "--no-hashes").code == 0


def test_a_refused_delete_names_the_problem_and_leaves_the_run_as_it_was(
        gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    before = held(gateway, bucket_run, "studio/runs/1/")
    images = images_of(engine, 1)

    def deny_from_now(step: str) -> None:
        if step == "marked":  # after the run is marked deleting, before any object goes
            gateway.set_fault("deny")

    with pytest.raises(StorageError) as caught:
        retention.delete_run(engine, Settings.from_env(), 1, deny_from_now)
    message = str(caught.value)
    assert "permission denied" in message and "Nothing was deleted: run 1 is as it was" in message
    gateway.set_fault("ok")
    with session(engine) as s:
        assert s.get_one(Run, 1).status == "completed"  # not left 'deleting'
    assert images_of(engine, 1) == images and held(gateway, bucket_run, "studio/runs/1/") == before

    gateway.set_fault("deny")  # the CLI: a message on stderr, no traceback, nothing changed
    result = run_cli("delete", "run", "1", "--yes")
    gateway.set_fault("ok")
    assert result.code != 0 and "permission denied" in result.err and "Traceback" not in result.err
    assert images_of(engine, 1) == images and held(gateway, bucket_run, "studio/runs/1/") == before


def test_a_prune_the_bucket_refuses_keeps_its_journal_and_the_next_prune_finishes_it(
        gateway: S3Gateway, bucket_run: str, engine, isolated_data_dir: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    doomed = images_of(engine, 1)

    def fail_on_the_objects(step: str) -> None:
        if step == "rows":  # the rows forget the images; then the bucket refuses the delete
            gateway.set_fault("500")

    with pytest.raises(StorageError) as caught:
        retention.prune(engine, Settings.from_env(), retention.PrunePolicy(older_than_days=0), checkpoint=fail_on_the_objects)
    gateway.set_fault("ok")
    message = str(caught.value)
    assert "500" in message and "prune-journal.json" in message and "still in the bucket" in message
    assert images_of(engine, 1) == {}  # no row points at an object that may be gone
    assert set(doomed.values()) <= set(held(gateway, bucket_run, "studio/runs/1/"))
    assert (isolated_data_dir / "prune-journal.json").is_file()
    assert run_cli("doctor", "--no-hashes").code == 1  # the interrupted prune is reported

    result = run_cli("prune", "--keep-best")
    assert result.code == 0 and f"Finished an interrupted prune of {len(doomed)} image(s)" in result.out
    assert not set(doomed.values()) & set(held(gateway, bucket_run, "studio/runs/1/"))
    assert run_cli("doctor").code == 0


def test_deleting_a_project_removes_its_runs_objects(gateway: S3Gateway, bucket_run: str, engine) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    result = run_cli("run", SAMPLES / "seed.json", "--iterations", "1", "--project", "client-x")
    assert result.code == 0, result.out + result.err
    assert held(gateway, bucket_run, "studio/runs/client-x/")
    before = held(gateway, bucket_run, "studio/runs/1/")
    deleted = run_cli("delete", "project", "client-x", "--yes")
    assert deleted.code == 0, deleted.out + deleted.err
    assert held(gateway, bucket_run, "studio/runs/client-x/") == {}
    assert held(gateway, bucket_run, "studio/runs/1/") == before  # the default project's run stays


def test_a_bucket_that_refuses_or_fails_stops_the_doctor_with_a_clear_message(gateway: S3Gateway, bucket_run: str) -> None:  # noqa: F811
    for fault, said in (("deny", "permission denied"), ("500", "answered 500")):
        gateway.set_fault(fault)
        result = run_cli("doctor")
        gateway.set_fault("ok")
        assert result.code == 1 and said in result.err and "Traceback" not in result.err, (fault, result.err)
        assert f"s3://{bucket_run}/studio/:" in result.err  # names where
    assert run_cli("doctor").code == 0
