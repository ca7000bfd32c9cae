"""What a bucket costs a run: the same offline run with images in the data folder and in an S3 bucket.

S3 here is moto's server on loopback behind tests/emulators/s3gateway.py (which checks each PUT's
MD5 and SHA-256), so the figures measure Darkroom's own overhead per object (signing, checksums,
one PUT per image and sidecar, HEAD on resume), not a network. Prints, for each: wall time of the
run, images per second, objects written; then a zip export streamed from the bucket and an
export to an S3 prefix.

    python bench/storage.py [--prompts 48] [--iterations 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402

from pipeline.cli import main  # noqa: E402
from tests.emulators.s3gateway import S3Gateway  # noqa: E402

WORDS = ["red", "teal", "golden", "violet", "green", "orange", "blue", "pink"]


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    code = main([str(a) for a in args], out=open(os.devnull, "w"), err=sys.stderr)
    if code != 0:
        raise SystemExit(f"{args[0]} exited {code}")
    return time.perf_counter() - t0


def run_once(label: str, folder: Path, prompt_set: Path, iterations: int, storage_url: str = "") -> None:
    os.environ["DARKROOM_DATA_DIR"] = str(folder)
    os.environ.pop("DARKROOM_STORAGE_URL", None)
    if storage_url:
        os.environ["DARKROOM_STORAGE_URL"] = storage_url
    took = cli("run", prompt_set, "--iterations", str(iterations))
    from sqlalchemy import create_engine, text
    with create_engine(f"sqlite:///{folder / 'darkroom.db'}").connect() as c:
        images = c.execute(text("select count(*) from iteration where status = 'ok'")).scalar_one()
    print(f"{label:>7}: run {took:6.2f} s, {images} images, {images / took:6.1f} images/s")


def main_() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--iterations", type=int, default=2)
    args = parser.parse_args()
    gateway = S3Gateway().start()
    os.environ.update({"AWS_ENDPOINT_URL": gateway.url, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "bench-key-id",
                       "AWS_SECRET_ACCESS_KEY": "bench-not-a-secret"})
    client = boto3.client("s3", endpoint_url=gateway.moto_url, region_name="us-east-1")
    for name in ("darkroom-bench", "darkroom-bench-out"):
        client.create_bucket(Bucket=name)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            prompt_set = base / "set.json"
            prompt_set.write_text(json.dumps({"prompts": [
                {"id": f"p{i:03d}", "prompt": f"A {WORDS[i % len(WORDS)]} lantern on a hill, number {i}"}
                for i in range(args.prompts)]}))
            run_once("local", base / "local", prompt_set, args.iterations)
            before = len(gateway.requests)
            run_once("bucket", base / "s3", prompt_set, args.iterations, "s3://darkroom-bench/studio")
            puts = len([r for r in gateway.requests[before:] if r[0] == "PUT"])
            print(f"         {puts} PUTs to the bucket for that run (images and sidecars)")
            took = cli("export", "1", "--out", base / "out.zip")
            size = (base / "out.zip").stat().st_size
            with zipfile.ZipFile(base / "out.zip") as zf:
                n = len(zf.namelist()) - 2
            print(f" export: zip of {n} images streamed from the bucket, {size / 1e6:.1f} MB in {took:.2f} s "
                  f"({size / 1e6 / took:.1f} MB/s)")
            took = cli("export", "1", "--to", "s3://darkroom-bench-out/delivery")
            print(f" export: the same {n} images + manifests to an S3 prefix in {took:.2f} s ({n / took:.1f} images/s)")
    finally:
        gateway.stop()


if __name__ == "__main__":
    main_()
