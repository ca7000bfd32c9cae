from __future__ import annotations

import contextlib
import inspect
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline import quotas, registry
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


# The database the tests run on: SQLite files (default), or with DARKROOM_TEST_DATABASE=postgresql a
# fresh database on the PostgreSQL server at DARKROOM_TEST_PG_URL, created for the session and
# emptied before each test (tests/pg.py). .ci/run runs the tests marked ``db`` both ways.
TEST_DATABASE = os.environ.get("DARKROOM_TEST_DATABASE", "sqlite")
DB_FIXTURES = {"engine", "settings", "pg_url"}
# A test touches the database when it, a fixture it uses or a helper of its module (followed through the
# helpers it calls) names one of these: each opens the database, in the test's process or in a subprocess
# (CLI, streamlit, API server, workers), which subprocess_env points at the test's database.
DB_HELPERS = {"run_cli", "subprocess_env", "streamlit_server", "create_run", "open_database", "AppTest", "database_rows"}


def _names_a_db_helper(func: object, seen: set[int]) -> bool:
    func = inspect.unwrap(func)  # type: ignore[arg-type]
    code, module = getattr(func, "__code__", None), getattr(func, "__module__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    scope = getattr(func, "__globals__", {})
    codes = [code]
    while codes:
        current = codes.pop()
        for name in current.co_names:
            helper = scope.get(name)
            if name in DB_HELPERS or (inspect.isfunction(helper) and helper.__module__ == module and _names_a_db_helper(helper, seen)):
                return True
        codes.extend(c for c in current.co_consts if inspect.iscode(c))
    return False


def touches_database(item: pytest.Item) -> bool:
    """Whether ``item`` uses the database (marked ``db``: .ci/run runs these again on PostgreSQL)."""
    if DB_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("empty_database"):
        return True
    seen: set[int] = set()
    if _names_a_db_helper(getattr(item, "function", None), seen):
        return True
    fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    return any(_names_a_db_helper(defs[-1].func, seen) for defs in fixtures.values() if defs)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "db: touches the database (run again on PostgreSQL in CI); set by conftest")
    config.addinivalue_line("markers", "sqlite_only: checks SQLite-file behaviour (damaged file, full disk): skipped on PostgreSQL")
    config.addinivalue_line("markers", "empty_database: starts from an empty schema (PostgreSQL: dropped, not truncated)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not item.get_closest_marker("db") and touches_database(item):
            item.add_marker(pytest.mark.db)
        if TEST_DATABASE == "postgresql" and item.get_closest_marker("sqlite_only"):
            item.add_marker(pytest.mark.skip(reason="SQLite-file behaviour; this session runs on PostgreSQL"))


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str | None]:
    """On PostgreSQL: this session's own database (dropped at the end); on SQLite: None."""
    if TEST_DATABASE != "postgresql":
        yield None
        return
    from tests.pg import session_database

    with session_database() as url:
        yield url


def runners_started_here(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every BackgroundRunner started during this test, to stop at its end."""
    from pipeline.runs.background import BackgroundRunner

    started: list[Any] = []
    start = BackgroundRunner.start

    def recording_start(self: BackgroundRunner, **kwargs: Any) -> list[int]:
        started.append(self)
        return start(self, **kwargs)

    monkeypatch.setattr(BackgroundRunner, "start", recording_start)
    return started


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
                      pg_session_url: str | None) -> Iterator[Path]:
    """Every test gets its own data folder and database; nothing touches the real data/."""
    data = tmp_path / "data"
    monkeypatch.setenv("DARKROOM_DATA_DIR", str(data))
    monkeypatch.delenv("DARKROOM_DATABASE_URL", raising=False)
    if pg_session_url is not None:
        from tests.pg import reset_database

        reset_database(pg_session_url, drop=request.node.get_closest_marker("empty_database") is not None)
        monkeypatch.setenv("DARKROOM_DATABASE_URL", pg_session_url)
    monkeypatch.delenv("DARKROOM_CONFIG", raising=False)
    from pipeline import envfile, redaction
    for module in (envfile, redaction):  # a developer's .env in the checkout never reaches a test
        monkeypatch.setattr(module, "ENV_FILE", tmp_path / ".env")
    monkeypatch.delenv("DARKROOM_PLUGINS", raising=False)
    monkeypatch.delenv("DARKROOM_WORKERS", raising=False)  # the dashboard's in-process executor, as shipped
    for var in ("DARKROOM_STORAGE_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_PROFILE"):  # a developer's bucket and keys never reach a test
        monkeypatch.delenv(var, raising=False)
    FakeProvider.reset()
    breaker.board.reset()  # breakers are per process: no test inherits another's open breaker
    quotas.board.reset()  # so are the quota readings services sent (the Providers page lists them)
    registry.ensure_loaded()
    for var in SERVICE_ENV_VARS:  # a developer's real keys never reach a test
        monkeypatch.delenv(var, raising=False)
    started = runners_started_here(monkeypatch)
    yield data
    # A runner thread a test left behind (an AppTest page's, say) would claim the next test's prompts:
    # on PostgreSQL every test shares one database, and run ids start again at 1.
    if "streamlit" in sys.modules:
        import streamlit as st

        st.cache_resource.clear()  # the dashboard's runner is released (stopped) with it
    for runner in started:
        runner.stop()
    if pg_session_url is not None:
        from tests.pg import close_test_connections

        close_test_connections()


@pytest.fixture
def pg_url(pg_session_url: str | None) -> str:
    """The test's PostgreSQL database, for tests only PostgreSQL can run (worker processes); they
    run in the PostgreSQL pass (DARKROOM_TEST_DATABASE=postgresql) and are skipped in the SQLite one."""
    if pg_session_url is None:
        pytest.skip("needs PostgreSQL: runs in the PostgreSQL pass (DARKROOM_TEST_DATABASE=postgresql)")
    return pg_session_url


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
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_")}
    env.update({"DARKROOM_DATA_DIR": str(data_dir), "DARKROOM_PLUGINS": "tests.fakes", "PYTHONPATH": str(ROOT)})
    if os.environ.get("DARKROOM_DATABASE_URL"):  # the test's PostgreSQL database (set by isolated_data_dir)
        env["DARKROOM_DATABASE_URL"] = os.environ["DARKROOM_DATABASE_URL"]
    env.update(extra)
    return env


PYTHON = sys.executable


def database_rows(data_dir: Path, sql: str) -> list[tuple]:  # type: ignore[type-arg]
    """The rows of ``sql`` in the database a subprocess given ``subprocess_env(data_dir)`` writes: the test's
    PostgreSQL database (``DARKROOM_DATABASE_URL``) or the SQLite file in ``data_dir``. ``[]`` while the
    database or the queried table does not exist yet (the subprocess is still creating it)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    url = os.environ.get("DARKROOM_DATABASE_URL")
    if not url:
        db = data_dir / "darkroom.db"
        if not db.exists():
            return []
        url = f"sqlite:///{db}"
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
    except sa.exc.DBAPIError as e:
        if "no such table" in str(e) or "UndefinedTable" in type(e.orig).__name__:
            return []
        raise
    finally:
        engine.dispose()


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
def streamlit_server(data_dir: Path, log_path: Path, *, port: int = 0, args: tuple[str, ...] = ()) -> Iterator[str]:
    """``streamlit run app.py`` as a user starts it, on a free loopback port (or ``port``), with
    extra command-line ``args``; yields its URL once healthy."""
    port = port or free_port()
    env = subprocess_env(data_dir)
    env.pop("DARKROOM_PLUGINS")  # the real app: offline stack only
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", *args],
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


# ---- Debian's Chromium, driven by Playwright (the browser tests) -------------------------------------------
CHROMIUM = Path(os.environ.get("DARKROOM_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def require_chromium() -> None:
    """Skip the calling test module without Chromium; in CI (DARKROOM_REQUIRE_BROWSER=1) fail instead."""
    if not CHROMIUM.exists():
        if os.environ.get("DARKROOM_REQUIRE_BROWSER") == "1":
            raise RuntimeError(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
        pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium (a Playwright ``Browser``), closed after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
