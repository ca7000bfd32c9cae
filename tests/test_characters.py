"""Characters, set style, template fields and size "auto"; and routing by the capability table:
a prompt with references skips a provider that cannot take them (the skip recorded with its
reason), and a prompt no provider of the chain can serve is refused before launch."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlmodel import select

from pipeline.config import Settings
from pipeline.errors import PromptSetInvalid
from pipeline.prompts.promptset import compose_prompt, validate_document
from pipeline.runs import control
from pipeline.runs.records import RunConfig
from pipeline.store.db import session
from pipeline.store.models import Iteration, RunItem
from tests.bundle_samples import avatar_files, write_folder
from tests.conftest import run_cli
from tests.fakes import FakeProvider

CAST = [{"id": "ada", "name": "Ada", "traits": ["red hair", "green coat"]}, {"id": "bo", "name": "Bo", "traits": "tall, quiet"}]


def problems_of(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(PromptSetInvalid) as e:
        validate_document(doc)
    return {p.path: p.message for p in e.value.problems}


def test_characters_and_the_set_style_reach_the_composed_prompt() -> None:
    spec = validate_document({"style": "ink and watercolour", "characters": CAST, "prompts": [
        {"id": "p1", "prompt": "Two friends at the harbour", "characters": ["ada", "bo"]},
        {"id": "p2", "prompt": "Ada alone at night", "characters": ["ada"], "style": "charcoal sketch"},
        {"id": "p3", "prompt": "An empty street"}]})
    p1, p2, p3 = spec.prompts
    assert compose_prompt(p1) == ("Two friends at the harbour. Characters: Ada (red hair, green coat); Bo (tall, quiet). "
                                  "Style: ink and watercolour.")
    assert compose_prompt(p2) == "Ada alone at night. Characters: Ada (red hair, green coat). Style: charcoal sketch."
    assert compose_prompt(p3) == "An empty street. Style: ink and watercolour."


def test_a_template_may_use_any_field_of_the_prompt_and_of_its_characters() -> None:
    spec = validate_document({"template": "Portrait of a {gender} named {names}: {bio}. Traits: {traits}. Age {age}.",
                              "characters": CAST, "prompts": [
                                  {"id": "a", "prompt": "x", "gender": "woman", "bio": "a sailor", "age": 31, "characters": ["ada"]},
                                  {"id": "b", "prompt": "y", "gender": "man", "characters": ["bo"]}]})
    a, b = spec.prompts
    assert compose_prompt(a) == "Portrait of a woman named Ada: a sailor. Traits: Ada: red hair, green coat. Age 31."
    # b has no bio: that sentence keeps what it has; no age: that sentence is dropped; nothing is sent literally
    assert compose_prompt(b) == "Portrait of a man named Bo: . Traits: Bo: tall, quiet."
    assert "{" not in compose_prompt(b)


def test_a_template_naming_a_field_no_prompt_has_is_a_validation_error_with_its_path() -> None:
    found = problems_of({"template": "{prompt}. Gender: {gender}.", "prompts": [{"id": "a", "prompt": "x", "bio": "b"}]})
    assert list(found) == ["template"] and "{gender} names a field no prompt has" in found["template"] and "bio" in found["template"]
    found = problems_of({"template": "{prompt} {pose}", "prompts": [{"id": "a", "prompt": "x", "pose": {"arm": "up"}}]})
    assert "needs text, a number or a list" in found["prompts[0].pose"]


def test_the_settings_template_is_checked_against_the_set_at_launch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "darkroom.toml"
    config.write_text('[prompt]\ntemplate = "{prompt}. Wearing {outfit}."\n')
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    (tmp_path / "set.json").write_text(json.dumps({"prompts": [{"id": "a", "prompt": "A knight"}]}))
    result = run_cli("run", tmp_path / "set.json", "--output", tmp_path / "out")
    assert result.code == 2 and "[prompt] template (settings): {outfit} names a field no prompt has" in result.err
    (tmp_path / "set.json").write_text(json.dumps({"prompts": [{"id": "a", "prompt": "A knight", "outfit": "plate armour"}]}))
    result = run_cli("run", tmp_path / "set.json", "--output", tmp_path / "out", "--iterations", "1")
    assert result.code == 0, result.err


def test_bad_characters_are_named_by_path() -> None:
    found = problems_of({"characters": [{"id": "ada", "name": "Ada"}, {"id": "ada", "name": "Twin"}, {"name": "No id"},
                                        {"id": "x", "name": "X", "traits": 3, "colour": "red"}],
                         "prompts": [{"id": "p", "prompt": "x", "characters": ["ada", "zed"]}]})
    assert found["characters[1].id"] == 'duplicate character id "ada"'
    assert "missing" in found["characters[2].id"]
    assert "expected a string or a list of strings" in found["characters[3].traits"]
    assert "colour" in found["characters[3]"]
    assert found["prompts[0].characters[1]"].startswith('no character "zed"')


def test_reference_entries_and_roles_are_checked() -> None:
    found = problems_of({"prompts": [{"id": "p", "prompt": "x", "reference_images": [
        {"path": "a.png", "role": "face"}, {"role": "style"}, 7, {"path": "m1.png", "role": "mask"}, {"path": "m2.png", "role": "mask"}]}]})
    assert "not a role; use one of subject, style, composition, mask" in found["prompts[0].reference_images[0].role"]
    assert "missing" in found["prompts[0].reference_images[1].path"]
    assert "got number" in found["prompts[0].reference_images[2]"]
    assert "a second mask" in found["prompts[0].reference_images[4].path"]


def test_size_auto_is_accepted_and_checked_against_each_provider(tmp_path: Path) -> None:
    spec = validate_document({"prompts": [{"id": "a", "prompt": "x", "size": "auto"}]})
    assert spec.prompts[0].size == "auto"
    (tmp_path / "set.json").write_text(json.dumps({"prompts": [{"id": "a", "prompt": "x", "size": "AUTO"}]}))
    refused = run_cli("run", tmp_path / "set.json", "--providers", "offline,fake", "--output", tmp_path / "o1")
    assert refused.code == 2 and 'prompts[0].size: "auto" is not a size fake takes' in refused.err
    # on a provider that takes "auto" it runs (the service chooses; the offline renderer uses the default size)
    done = run_cli("run", tmp_path / "set.json", "--output", tmp_path / "o2", "--iterations", "1")
    assert done.code == 0, done.err


def png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (48, 48), colour).save(out, format="PNG")
    return out.getvalue()


def bundle(root: Path) -> Path:
    doc = {"characters": [{"id": "ada", "name": "Ada", "traits": "red hair", "reference_images": ["ada.png"]}],
           "prompts": [{"id": "p1", "prompt": "Ada at the harbour", "characters": ["ada"],
                        "reference_images": [{"path": "style.png", "role": "style"}]},
                       {"id": "p2", "prompt": "An empty harbour"}]}
    return write_folder(root, {"prompts.json": json.dumps(doc).encode(), "ada.png": png((200, 40, 40)), "style.png": png((0, 0, 200))})


def test_a_provider_that_cannot_take_references_is_skipped_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Settings, engine: Any) -> None:
    config = tmp_path / "darkroom.toml"  # offline takes no images here; the fake takes two, subject and style
    config.write_text("[providers.offline.capabilities]\nreference_images = 0\nreference_roles = []\n\n"
                      '[providers.fake.capabilities]\nreference_images = 2\nreference_roles = ["subject", "style"]\n')
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    result = run_cli("run", bundle(tmp_path / "b"), "--providers", "offline,fake", "--output", tmp_path / "out", "--iterations", "1")
    assert result.code == 0, result.err
    with session(engine) as s:
        rows = {item.prompt_id: it for it, item in s.exec(select(Iteration, RunItem).join(RunItem)).all()}
    with_refs, without = rows[1], rows[2]
    assert with_refs.routing["served_by"] == "fake"
    assert with_refs.routing["skipped"] == [{"service": "offline", "reason": "takes no reference images"}]
    assert without.routing == {"served_by": "offline", "attempts": 1, "skipped": []}  # a text prompt is not rerouted
    sidecar = json.loads((tmp_path / "out" / "results" / "p1" / "iteration_1_results.json").read_text())
    assert sidecar["routing"]["skipped"] == [{"service": "offline", "reason": "takes no reference images"}]
    assert [(r["name"], r["role"]) for r in sidecar["parameters"]["references"]] == [("style.png", "style"), ("ada.png", "subject")]
    sent = [r for r in FakeProvider.history if r.prompt_id == "p1"]
    assert len(sent) == 1
    assert [(r.role, r.name, r.data) for r in sent[0].reference_images] == [
        ("style", "style.png", png((0, 0, 200))), ("subject", "ada.png", png((200, 40, 40)))]
    assert "Ada (red hair)" in sent[0].prompt
    assert not [r for r in FakeProvider.history if r.prompt_id == "p2"]


def test_a_prompt_no_provider_can_serve_is_refused_before_launch(tmp_path: Path, settings: Settings, isolated_data_dir: Path) -> None:
    root = bundle(tmp_path / "b")
    result = run_cli("run", root, "--providers", "fake", "--output", tmp_path / "out")
    assert result.code == 2
    assert ("prompts[0].reference_images: 2 reference image(s) (style, subject, its characters' included) that no provider "
            "in the chain can take: fake takes no reference images") in result.err
    assert "prompts[1]" not in result.err
    assert not isolated_data_dir.exists() and not (tmp_path / "out").exists()
    # a mask needs a provider with mask = true (offline has none)
    from pipeline.prompts.bundle import BundleLimits, load_source
    from pipeline.prompts.promptset import Limits
    (root / "prompts.json").write_text(json.dumps({"prompts": [{"id": "m", "prompt": "x", "reference_images": [
        "ada.png", {"path": "style.png", "role": "mask"}]}]}))
    spec = load_source(root, Limits(), BundleLimits.from_settings(settings))
    with pytest.raises(PromptSetInvalid, match="offline takes no mask"):
        control.check_prompt_set(settings, spec, RunConfig(providers=["offline"]))


def test_references_are_read_back_from_the_store_on_resume(tmp_path: Path, settings: Settings, engine: Any) -> None:
    """The run keeps its images in the data folder: a resumed run sends the same bytes, and a
    stored image that was changed is reported, not silently replaced."""
    from pipeline.prompts.bundle import BundleLimits, load_source
    from pipeline.prompts.promptset import Limits
    from pipeline.store.models import PromptReference
    from pipeline.store.references import load_reference

    root = bundle(tmp_path / "b")
    spec = load_source(root, Limits(), BundleLimits.from_settings(settings))
    run_id = control.launch(engine, settings, spec, RunConfig(providers=["offline"], iterations=1))
    for f in root.iterdir():  # the bundle is gone: the run must not need it
        f.unlink()
    with session(engine) as s:
        rows = s.exec(select(PromptReference).order_by(PromptReference.id)).all()
    assert [(r.role, r.name, r.character) for r in rows] == [("style", "style.png", ""), ("subject", "ada.png", "ada")]
    assert load_reference(settings.data_dir, rows[1]).data == png((200, 40, 40))
    done = run_cli("resume", str(run_id))  # executes the queued run, its images read from the store
    assert done.code == 0, done.err
    with session(engine) as s:
        assert [it.status for it in s.exec(select(Iteration)).all()] == ["ok", "ok"]
    # a stored image changed behind the run's back: that prompt fails saying which image, the others go on
    (settings.data_dir / rows[1].path).write_bytes(png((1, 1, 1)))
    spec2 = load_source(bundle(tmp_path / "b2"), Limits(), BundleLimits.from_settings(settings))
    rerun = control.launch(engine, settings, replace(spec2, sha256="other"), RunConfig(providers=["offline"], iterations=1))
    assert load_reference(settings.data_dir, rows[1]).data == png((200, 40, 40))  # a launch repairs the store
    (settings.data_dir / rows[1].path).write_bytes(png((1, 1, 1)))
    result = run_cli("resume", str(rerun))
    assert result.code == 1
    with session(engine) as s:
        items = s.exec(select(RunItem).where(RunItem.run_id == rerun).order_by(RunItem.id)).all()
    assert [i.status for i in items] == ["failed", "completed"]
    assert "reference image ada.png (subject)" in items[0].error_message and "has changed" in items[0].error_message


def test_the_avatar_bundle_fills_its_template_from_extra_fields(tmp_path: Path, settings: Settings) -> None:
    from pipeline.prompts.bundle import BundleLimits, load_source
    from pipeline.prompts.promptset import Limits
    spec = load_source(write_folder(tmp_path / "avatars", avatar_files()), Limits(), BundleLimits.from_settings(settings))
    first = spec.prompts[0]
    assert compose_prompt(first) == ("Avatar of a woman barista, 31, loves climbing and old jazz records. Same person as the "
                                     "reference, head and shoulders, friendly expression. Style: clean studio portrait, soft "
                                     "key light, plain background.")
    assert [(r.path, r.role) for r in first.all_references()] == [("base/ana.png", "subject")]


def test_a_default_size_of_auto_runs_where_the_provider_takes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "darkroom.toml"
    config.write_text('[prompt]\ndefault_size = "auto"\n')
    monkeypatch.setenv("DARKROOM_CONFIG", str(config))
    (tmp_path / "set.json").write_text(json.dumps({"prompts": [{"id": "a", "prompt": "x"}]}))
    refused = run_cli("run", tmp_path / "set.json", "--providers", "fake", "--output", tmp_path / "o1")
    assert refused.code == 2 and 'prompts[0].size ([prompt] default_size): "auto" is not a size fake takes' in refused.err
    done = run_cli("run", tmp_path / "set.json", "--output", tmp_path / "o2", "--iterations", "1")
    assert done.code == 0, done.err
    with Image.open(next((tmp_path / "o2" / "results" / "a").glob("iteration_1.*"))) as image:
        assert image.size == (1024, 1024)  # the offline renderer's choice for "auto": 1024x1024
