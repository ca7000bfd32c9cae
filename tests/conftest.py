from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import registry
from pipeline.cli import main
from pipeline.config import Settings
from pipeline.resilience import breaker
from pipeline.store.db import open_database

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "data" / "samples"

from tests.fakes import FakeProvider  # noqa: E402  (registers the fake provider)


def _service_env_vars() -> set[str]:
    registry.ensure_loaded()
    names = {"WORKER_TOKEN", "WORKER_METHOD", "OLLAMA_API_KEY", "COMFYUI_WORKFLOW", "COMFYUI_CHECKPOINT", "GOOGLE_API_KEY"}
    for reg in (registry.providers, registry.judges, registry.refiners):
        for name in reg.names():
            cls = reg.get_class(name)
            names.update(v for v in (cls.key_env_var, cls.base_url_env_var, cls.model_env_var, *cls.required_env_vars) if v)
    return names


SERVICE_ENV_VARS = _service_env_vars()


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own data folder and database; nothing touches the real data/."""
    data = tmp_path / "data"
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(data))
    monkeypatch.delenv("DARKROOM_DATABASE_URL", raising=False)
    monkeypatch.delenv("DARKROOM_CONFIG", raising=False)
    monkeypatch.delenv("DARKROOM_PLUGINS", raising=False)
    FakeProvider.reset()
    breaker.board.reset()  # breakers are per process: no test inherits another's open breaker
    registry.ensure_loaded()
    for var in SERVICE_ENV_VARS:  # a developer's real keys never reach a test
        monkeypatch.delenv(var, raising=False)
    return data


@pytest.fixture
def settings(isolated_data_dir: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture
def engine(settings: Settings):  # type: ignore[no-untyped-def]
    eng = open_database(settings)
    yield eng
    eng.dispose()


def write_prompt_set(path: Path, prompts: list[dict], **extra) -> Path:  # type: ignore[no-untyped-def]
    path.write_text(json.dumps({"prompts": prompts, **extra}), encoding="utf-8")
    return path


def make_prompts(n: int, **fields) -> list[dict]:  # type: ignore[no-untyped-def]
    words = ["red", "teal", "golden", "violet", "green", "orange", "blue", "pink"]
    return [{"id": f"p{i:03d}", "prompt": f"A {words[i % len(words)]} lantern on a hill, number {i}", **fields} for i in range(n)]


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def run_cli(*args: str) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    code = main([str(a) for a in args], out=out, err=err)
    return CliResult(code, out.getvalue(), err.getvalue())


def subprocess_env(data_dir: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update({"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


PYTHON = sys.executable


def create_run(engine, settings: Settings, prompts: list[dict], tmp_path: Path, **config) -> int:  # type: ignore[no-untyped-def]
    """Queue a run through the same functions the CLI uses; return its id."""
    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig, import_prompt_set
    from pipeline.runs.records import create_run as create
    from pipeline.store.db import session

    spec = load_file(write_prompt_set(tmp_path / f"set_{len(prompts)}_{id(prompts)}.json", prompts))
    with session(engine) as s:
        run = create(s, settings, import_prompt_set(s, spec), RunConfig(**config))
        s.commit()
        return run.id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(data_dir: Path, log_path: Path) -> Iterator[str]:
    """``streamlit run app.py`` as a user starts it, on a free loopback port; yields its URL once healthy."""
    port = free_port()
    env = subprocess_env(data_dir)
    env.pop("DARKROOM_PLUGINS")  # the real app: offline stack only
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamlit did not start:\n" + log_path.read_text())
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
