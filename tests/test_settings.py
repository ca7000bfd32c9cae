"""Settings are read once into typed tables, and every default lives in pipeline/defaults.toml only."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from pipeline.cli import build_parser
from pipeline.config import COMPONENT_KINDS, DEFAULTS_FILE, TYPED_SECTIONS, Settings
from pipeline.errors import ConfigError, ContentBlocked
from pipeline.store.db import open_database, session
from pipeline.store.models import Iteration
from tests.conftest import ROOT, make_prompts, run_cli, write_prompt_set
from tests.fakes import FakeProvider

DEFAULTS: dict[str, Any] = tomllib.loads(DEFAULTS_FILE.read_text(encoding="utf-8"))
SOURCES = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "pages").rglob("*.py"), ROOT / "app.py"])
# A dict read of a configuration table: `<settings|table|cfg|section(...)|service_settings(...)>.get("key"`
TABLE_READ = re.compile(r"([A-Za-z_.]*(?:settings|section|table|cfg|defaults)[A-Za-z_]*(?:\([^()]*\))?)\.get\(\s*\"([a-z_]+)\"")
# wire.setting(ENV_VAR, self.settings, "key", default): an environment variable over a service's table
SERVICE_SETTING = re.compile(r"setting\([^,()]+,\s*self\.settings,\s*\"([a-z_]+)\"")
SECTION_CALL = re.compile(r"section\(((?:\s*\"[a-z_]+\",?)+)\)")
SERVICE_SETTINGS_CALL = re.compile(r"service_settings\([^()]*\"([a-z_]+)\"\)")


def _all_keys(node: dict[str, Any]) -> set[str]:
    keys: set[str] = set()
    for key, value in node.items():
        keys.add(key)
        if isinstance(value, dict):
            keys |= _all_keys(value)
    return keys


def _service_keys() -> set[str]:
    """Keys a service's own table may hold: those some service declares, and the shared tables
    the registry or the chain merge under it ([network], [resilience.X])."""
    keys = {k for kind in COMPONENT_KINDS for table in DEFAULTS[kind].values() for k in table}
    keys |= set(DEFAULTS.get("network", {})) | set(DEFAULTS["resilience"])
    return keys


def _table_at(path: tuple[str, ...]) -> dict[str, Any] | None:
    node: Any = DEFAULTS
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def test_every_typed_table_has_exactly_the_keys_defaults_toml_declares() -> None:
    settings = Settings.from_env()
    for section, cls in TYPED_SECTIONS.items():
        assert {f.name for f in fields(cls)} == set(DEFAULTS[section]), f"[{section}] and {cls.__name__} disagree"
        table = getattr(settings, section)
        assert {f.name: getattr(table, f.name) for f in fields(cls)} == {
            k: tuple(v) if isinstance(v, list) else v for k, v in DEFAULTS[section].items()}


def test_no_code_reads_a_settings_key_that_defaults_toml_does_not_declare() -> None:
    service_keys, everywhere = _service_keys(), _all_keys(DEFAULTS)
    problems: list[str] = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(ROOT)
        named: list[dict[str, Any]] = []  # the shared tables this file reads as dicts
        for match in SECTION_CALL.finditer(text):
            keys = tuple(re.findall(r"\"([a-z_]+)\"", match.group(1)))
            if keys[0] in TYPED_SECTIONS:
                problems.append(f"{where}: section({', '.join(keys)}) is read as a dict; use settings.{keys[0]}")
            table = _table_at(keys)
            if table is None:
                problems.append(f"{where}: section({', '.join(keys)}) names a table defaults.toml does not declare")
            else:
                named.append(table)
        for match in SERVICE_SETTINGS_CALL.finditer(text):
            table = _table_at(("resilience", match.group(1)))
            if table is None:
                problems.append(f"{where}: [resilience.{match.group(1)}] is not declared")
            else:
                named.append(table)
        for n, line in enumerate(text.splitlines(), 1):
            for receiver, key in TABLE_READ.findall(line):
                if receiver.endswith("settings") and "section" not in receiver or receiver.endswith("component_settings"):
                    declared = key in service_keys  # a service's own table
                elif named:
                    declared = any(key in table for table in named)
                else:
                    declared = key in everywhere
                if not declared:
                    problems.append(f"{where}:{n}: reads {key!r} from {receiver}, which defaults.toml does not declare")
            problems += [f"{where}:{n}: reads service key {key!r}, which no service declares in defaults.toml"
                         for key in SERVICE_SETTING.findall(line) if key not in service_keys]
    assert problems == []


def _override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "darkroom-override.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("DARKROOM_CONFIG", str(path))
    return path


@pytest.mark.parametrize("text, key", [
    ("[run]\niteratoins = 3\n", "run.iteratoins"),
    ("[providers.fal]\npol_initial_s = 0.01\n", "providers.fal.pol_initial_s"),
    ("[providers.fal.limits]\nmax_concurency = 2\n", "providers.fal.limits.max_concurency"),
    ("[scorring]\nfaithfulness_weight = 0.5\n", "scorring"),
])
def test_an_override_file_with_an_unknown_key_is_refused_naming_the_file_and_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str) -> None:
    path = _override(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(path) in str(caught.value) and repr(key) in str(caught.value)
    result = run_cli("status")
    assert result.code == 2 and str(path) in result.err and key in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("text, key", [
    ("[run]\niterations = \"three\"\n", "run.iterations"),
    ("[run]\niterations = 2.5\n", "iterations = 2.5"),
    ("[images]\nthumbnail_format = 82\n", "images.thumbnail_format"),
    ("[run]\nproviders = \"fal\"\n", "run.providers"),
])
def test_an_override_of_the_wrong_kind_is_refused_naming_the_file_and_the_key(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str) -> None:
    path = _override(tmp_path, monkeypatch, text)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env()
    assert str(path) in str(caught.value) and key in str(caught.value)


def test_override_values_reach_the_typed_tables_and_the_command_line_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _override(tmp_path, monkeypatch, (
        "[run]\niterations = 3\nproviders = [\"fake\", \"offline\"]\n"
        "[scoring]\nfaithfulness_weight = 1\n"          # an integer where a number is wanted is fine
        "[providers.cloudflare.limits]\nmax_concurrency = 2\n"  # a service overriding a shared table
        "[providers.cloudflare]\nprice_per_megapixel = 0.01\n"  # a key another provider declares
        "[providers.myplugin]\nanything = 1\n"          # a plugin's own table is its own business
        "[providers.fal.prices]\n\"fal-ai/some-new-model\" = { price_per_image = 0.05 }\n"))
    settings = Settings.from_env()
    assert (settings.run.iterations, settings.run.providers, settings.scoring.faithfulness_weight) == (3, ("fake", "offline"), 1.0)
    assert settings.run.judge == DEFAULTS["run"]["judge"]  # untouched keys keep the shipped value
    assert settings.component("providers", "myplugin") == {"anything": 1}
    args = build_parser(settings).parse_args(["run", "set.json"])
    assert (args.iterations, args.providers) == (3, "fake,offline")


def test_a_blocked_prompt_is_rewritten_with_the_hint_defaults_toml_gives(tmp_path: Path, settings: Settings) -> None:
    FakeProvider.failures.append(ContentBlocked("refused by policy", http_status=400))
    path = write_prompt_set(tmp_path / "set.json", make_prompts(1))
    result = run_cli("run", path, "--providers", "fake", "--iterations", "1")
    assert result.code == 0, result.err
    engine = open_database(settings)
    with session(engine) as s:
        it = s.exec(select(Iteration)).one()
    engine.dispose()
    hint = DEFAULTS["run"]["block_rewrite_hint"]
    assert it.routing["rewrites"][0]["blocked_by"] == "fake"
    assert hint.lower() in it.prompt_text.lower() and it.status == "ok"
