"""Every validation rule of a prompt set, with the message a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import PromptSetInvalid
from pipeline.prompts.promptset import Limits, PromptSpec, compose_prompt, load_file, parse_bytes, validate_document

GOOD = {"id": "scene_001", "title": "Neon", "scene": "alley", "mood": "calm", "prompt": "A fox"}


DEFAULT_LIMITS = Limits()


def problems_of(doc: object, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    with pytest.raises(PromptSetInvalid) as info:
        validate_document(doc, limits)
    return [str(p) for p in info.value.problems]


def test_seed_format_is_accepted_with_optional_fields_and_unknown_keys_kept() -> None:
    doc = {"name": "Set", "prompts": [
        GOOD,
        {"id": "b-2", "prompt": "A boat", "negative_prompt": "text", "seed": 42, "size": "768x512",
         "tags": ["sea", "boat"], "camera": {"lens": "35mm"}},
    ]}
    spec = validate_document(doc)
    assert spec.name == "Set"
    assert [p.id for p in spec.prompts] == ["scene_001", "b-2"]
    second = spec.prompts[1]
    assert (second.seed, second.size, second.tags, second.negative_prompt) == (42, "768x512", ("sea", "boat"), "text")
    assert second.metadata == {"camera": {"lens": "35mm"}}


@pytest.mark.parametrize(
    "bad_id, message",
    [
        ("../x", '"../x" has characters other than letters, digits, _ and -'),
        ("a/b", '"a/b" has characters other than letters, digits, _ and -'),
        ("", '"" is empty'),
        ("con.", '"con." has characters other than letters, digits, _ and -'),
        ("CON", '"CON" is a reserved device name on Windows'),
        ("x" * 65, "is longer than 64 characters"),
        ("héllo", "has characters other than letters"),
    ],
)
def test_ids_that_cannot_be_folder_names_are_rejected(bad_id: str, message: str) -> None:
    [problem] = problems_of({"prompts": [{"id": bad_id, "prompt": "A fox"}]})
    assert problem.startswith("prompts[0].id: ")
    assert message in problem


def test_a_64_character_id_is_accepted() -> None:
    assert validate_document({"prompts": [{"id": "a" * 64, "prompt": "x"}]}).prompts[0].id == "a" * 64


def test_duplicate_ids_name_both_positions() -> None:
    doc = {"prompts": [GOOD, {"id": "b", "prompt": "x"}, {"id": "c", "prompt": "x"}, {"id": "scene_001", "prompt": "y"}]}
    assert problems_of(doc) == ['prompts[3].id: duplicate id "scene_001" (first at prompts[0])']


def test_ids_differing_only_in_case_are_rejected_because_folders_would_collide() -> None:
    [problem] = problems_of({"prompts": [{"id": "Scene", "prompt": "x"}, {"id": "scene", "prompt": "y"}]})
    assert problem == 'prompts[1].id: "scene" differs only in case from "Scene" at prompts[0]; ids become folder names'


def test_missing_id_and_prompt_are_both_reported() -> None:
    assert problems_of({"prompts": [{"title": "t"}]}) == [
        "prompts[0].id: missing (every prompt needs an id)",
        "prompts[0].prompt: missing (every prompt needs prompt text)",
    ]


def test_prompt_must_be_non_empty_text() -> None:
    assert problems_of({"prompts": [{"id": "a", "prompt": "   "}, {"id": "b", "prompt": 5}]}) == [
        "prompts[0].prompt: is empty",
        "prompts[1].prompt: expected a string, got number",
    ]


def test_prompt_over_the_limit_names_limit_and_length() -> None:
    [problem] = problems_of({"prompts": [{"id": "a", "prompt": "x" * 10_001}]})
    assert problem == "prompts[0].prompt: 10,001 characters, over the limit of 10,000"
    assert validate_document({"prompts": [{"id": "a", "prompt": "x" * 10_000}]})


def test_optional_fields_are_type_checked() -> None:
    doc = {"prompts": [{"id": "a", "prompt": "x", "title": 3, "scene": ["s"], "mood": True, "negative_prompt": {}}]}
    assert problems_of(doc) == [
        "prompts[0].title: expected a string, got number",
        "prompts[0].scene: expected a string, got list",
        "prompts[0].mood: expected a string, got boolean",
        "prompts[0].negative_prompt: expected a string, got object",
    ]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", 1.5, "prompts[0].seed: expected a whole number, got number"),
        ("seed", True, "prompts[0].seed: expected a whole number, got boolean"),
        ("seed", -1, "prompts[0].seed: -1 is outside 0–4294967295"),
        ("size", "big", 'prompts[0].size: expected "WIDTHxHEIGHT" such as "1024x1024", got "big"'),
        ("size", "32x512", "prompts[0].size: width 32 is outside 64–4096 pixels"),
        ("size", "512x9000", "prompts[0].size: height 9000 is outside 64–4096 pixels"),
        ("size", 512, 'prompts[0].size: expected a string like "1024x768", got number'),
        ("tags", "sea", "prompts[0].tags: expected a list of strings, got string"),
        ("tags", ["sea", 3, ""], "prompts[0].tags[1]: expected a non-empty string, got number"),
    ],
)
def test_seed_size_and_tags_rules(field: str, value: object, message: str) -> None:
    assert message in problems_of({"prompts": [{"id": "a", "prompt": "x", field: value}]})


def test_every_problem_is_collected_not_just_the_first() -> None:
    doc = {"name": 7, "prompts": [{"id": "a/b", "prompt": ""}, "oops", {"id": "ok", "prompt": "x", "seed": "1"}]}
    assert problems_of(doc) == [
        "name: expected a string, got number",
        'prompts[0].id: "a/b" has characters other than letters, digits, _ and -; ids become folder names, so use 1–64 of A–Z a–z 0–9 _ -',
        "prompts[0].prompt: is empty",
        "prompts[1]: expected an object with at least an id and a prompt, got string",
        "prompts[2].seed: expected a whole number, got string",
    ]


def test_document_shape_errors() -> None:
    assert problems_of({"prompts": []}) == ["prompts: is empty: add at least one prompt"]
    assert problems_of({"name": "x"}) == ['prompts: missing: the prompt set needs a "prompts" list']
    assert problems_of({"prompts": {"id": "a"}}) == ["prompts: expected a list, got object"]
    assert problems_of([GOOD]) == ['$: expected an object {"prompts": [...]}, got a list; wrap the list as {"prompts": [ ... ]}']
    assert problems_of("text") == ['$: expected an object {"prompts": [...]}, got string']


def test_too_many_prompts() -> None:
    doc = {"prompts": [{"id": f"p{i}", "prompt": "x"} for i in range(11)]}
    assert problems_of(doc, Limits(max_prompts=10)) == ["prompts: 11 prompts, over the limit of 10"]


def test_invalid_json_reports_line_and_column() -> None:
    with pytest.raises(PromptSetInvalid) as info:
        parse_bytes(b'{"prompts": [\n  {"id": "a", "prompt": "x",}\n]}')
    assert str(info.value.problems[0]) == "invalid JSON at line 2 column 29: Expecting property name enclosed in double quotes"


def test_non_utf8_is_reported_with_the_byte_position() -> None:
    with pytest.raises(PromptSetInvalid) as info:
        parse_bytes(b'{"prompts": [{"id": "a", "prompt": "caf\xe9"}]}')
    assert str(info.value.problems[0]) == "not UTF-8 text: byte 39 (0xe9) cannot be decoded"


def test_a_utf8_byte_order_mark_is_accepted() -> None:
    assert parse_bytes(b"\xef\xbb\xbf" + json.dumps({"prompts": [GOOD]}).encode()).prompts[0].id == "scene_001"


def test_file_over_the_size_limit_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 2_000)
    with pytest.raises(PromptSetInvalid) as info:
        load_file(path, Limits(max_bytes=1_000))
    assert str(info.value) == f"{path}: 1 problem in the prompt set:\n  the file is 2,000 bytes, over the limit of 1,000 bytes"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PromptSetInvalid, match="no such file"):
        load_file(tmp_path / "nope.json")


def test_the_samples_are_valid() -> None:
    root = Path(__file__).resolve().parent.parent / "data" / "samples"
    seed = load_file(root / "seed.json")
    parti = load_file(root / "parti_40.json")
    assert len(seed.prompts) >= 10 and all(p.title and p.scene and p.mood for p in seed.prompts)
    assert len(parti.prompts) == 40
    assert len({p.metadata["challenge"] for p in parti.prompts}) == 11


def test_compose_prompt_combines_fields_by_the_template_and_drops_empty_parts() -> None:
    full = PromptSpec(id="a", prompt="A fox in snow", title="Fox", scene="a pine forest", mood="calm")
    assert compose_prompt(full) == "Fox. A fox in snow. Scene: a pine forest. Mood: calm."
    assert compose_prompt(PromptSpec(id="a", prompt="A fox.", mood="calm")) == "A fox. Mood: calm."
    assert compose_prompt(PromptSpec(id="a", prompt="A fox")) == "A fox."
    assert compose_prompt(full, "{prompt}, {mood} mood") == "A fox in snow, calm mood"


# ---- hostile prompt sets (issue 11, items 7 and 16) ------------------------------------------------------------
def test_a_lone_surrogate_anywhere_is_refused_with_its_json_path() -> None:
    """Legal JSON, not valid Unicode: refused at validation, every occurrence named, the message printable."""
    raw = (r'{"name": "set \ud800", "prompts": [{"id": "a", "prompt": "a fox \ud800 in snow", "title": "\udfff",'
           r' "tags": ["ok", "\ud83d"], "camera": {"lens\ud800": 1, "odd key": ["\udc00"]}},'
           r' {"id": "b\ud800", "prompt": "x"}]}').encode()
    with pytest.raises(PromptSetInvalid) as info:
        parse_bytes(raw)
    assert [(p.path, p.message.split(":")[0]) for p in info.value.problems] == [
        ("name", "contains a lone surrogate (\\ud800) at character 4"),
        ("prompts[0].prompt", "contains a lone surrogate (\\ud800) at character 6"),
        ("prompts[0].title", "contains a lone surrogate (\\udfff) at character 0"),
        ("prompts[0].tags[1]", "contains a lone surrogate (\\ud83d) at character 0"),
        ('prompts[0].camera["lens\\ud800"]', "this key contains a lone surrogate"),
        ('prompts[0].camera["odd key"][0]', "contains a lone surrogate (\\udc00) at character 0"),
        ("prompts[1].id", "contains a lone surrogate (\\ud800) at character 1"),
    ]
    str(info.value).encode("utf-8")  # the whole message can be printed and stored


def test_a_valid_surrogate_pair_is_just_an_emoji() -> None:
    spec = parse_bytes(rb'{"prompts": [{"id": "a", "prompt": "a fox \ud83e\udd8a"}]}')
    assert spec.prompts[0].prompt == "a fox \N{FOX FACE}"


def test_deep_nesting_is_a_message_not_a_recursion_error() -> None:
    deep = b'{"prompts": [{"id": "a", "prompt": "x", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    with pytest.raises(PromptSetInvalid) as info:
        parse_bytes(deep)
    assert str(info.value.problems[0]).startswith("nested too deeply to read")
    middling = {"prompts": [{"id": "a", "prompt": "x", "meta": json.loads("[" * 40 + "]" * 40)}]}
    [problem] = problems_of(middling)
    assert problem.startswith("prompts[0].meta[0]") and problem.endswith("nested more than 32 levels deep; flatten it")


def test_a_5000_digit_integer_is_a_message_naming_where_it_is() -> None:
    raw = b'{"prompts": [{"id": "a", "prompt": "x",\n "seed": ' + b"9" * 5_000 + b"}]}"
    with pytest.raises(PromptSetInvalid) as info:
        parse_bytes(raw)
    assert str(info.value.problems[0]) == (
        "a number at line 2 column 10 is too long (5,000 digits): at most 4,300 digits can be read (a seed is at most 4294967295)")
    [problem] = problems_of({"prompts": [{"id": "a", "prompt": "x", "seed": 10**4000}]})
    assert problem == "prompts[0].seed: a 4,001-digit number is outside 0–4294967295"  # not the number itself


@pytest.mark.parametrize("name", ["COM0", "com1", "Lpt0", "LPT9", "con", "PRN", "aux", "NuL"])
def test_every_windows_device_name_is_refused_as_an_id(name: str) -> None:
    [problem] = problems_of({"prompts": [{"id": name, "prompt": "A fox"}]})
    assert problem == f'prompts[0].id: "{name}" is a reserved device name on Windows and cannot be a folder name'


def test_device_names_are_recognised_with_an_extension_and_lookalikes_are_not() -> None:
    from pipeline.prompts.promptset import is_reserved_name

    assert all(map(is_reserved_name, ["nul.txt", "COM0.jpg", "lpt9.tar.gz", "Con", "aux "]))
    assert not any(map(is_reserved_name, ["console", "com10", "lpt", "nullable", "comet", "scene_001"]))


def test_a_long_bad_value_is_cut_in_the_message() -> None:
    [problem] = problems_of({"prompts": [{"id": "x/" * 5_000, "prompt": "A fox"}]})
    assert "… (10,000 characters)" in problem and len(problem) < 300


def test_a_file_name_that_is_not_utf8_is_shown_escaped(tmp_path: Path) -> None:
    path = tmp_path / "caf\udce9.json"  # how Python names the bytes b"caf\xe9.json" on Linux
    path.write_text(json.dumps({"prompts": [GOOD]}), encoding="utf-8")
    spec = load_file(path)
    assert spec.name == "caf\\udce9"
    spec.name.encode("utf-8")


def test_the_cli_refuses_a_lone_surrogate_with_exit_2_and_no_traceback(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    path = tmp_path / "set.json"
    path.write_bytes(rb'{"prompts": [{"id": "a", "prompt": "a fox \ud800 in snow"}]}')
    result = run_cli("run", path)
    assert result.code == 2
    assert "prompts[0].prompt: contains a lone surrogate (\\ud800) at character 6" in result.err
    assert "Traceback" not in result.err and len(result.err.splitlines()) <= 3
