"""kill -9 while an asynchronous service works on a request, then resume: the request is polled,
never submitted (and paid for) twice, and the image is recorded with the service's request id,
original URL and metadata. The services are their loopback emulators (fal queue, Leonardo, ComfyUI).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlmodel import select

from pipeline.store.db import session
from pipeline.store.models import Iteration, ProviderCall, RunItem
from tests.conftest import PYTHON, ROOT, make_prompts, run_cli, subprocess_env, write_prompt_set
from tests.emulators import Emulator, comfyui, leonardo
from tests.emulators.fal import KEY as FAL_KEY
from tests.emulators.fal import FalEmulator


@dataclass
class Service:
    name: str
    emulator: Callable[[], Emulator]
    env: Callable[[Emulator], dict[str, str]]
    submit_path: str
    hold: Callable[[Emulator, bool], None]  # keep jobs unfinished (True), or let them finish (False)


def _polls(e: Emulator, on: bool) -> None:
    e.polls_before_done = 10**9 if on else 1  # type: ignore[attr-defined]
    if not on:
        e.polls.clear()  # type: ignore[attr-defined]


SERVICES = [
    Service("fal", FalEmulator, lambda e: {"FAL_KEY": FAL_KEY, "FAL_BASE_URL": e.url}, "/fal-ai/",
            lambda e, on: setattr(e, "stuck", on)),
    Service("leonardo", leonardo.LeonardoEmulator,
            lambda e: {"LEONARDO_API_KEY": leonardo.KEY, "LEONARDO_BASE_URL": f"{e.url}/api/rest/v1"}, "/api/rest/v1/generations", _polls),
    Service("comfyui", comfyui.ComfyUIEmulator, lambda e: {"COMFYUI_URL": e.url}, "/prompt", lambda e, on: setattr(e, "stuck", on)),
]


def _recorded_requests(db: Path) -> list[str]:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=5)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'iteration'").fetchone():
            return []
        columns = {row[1] for row in con.execute("PRAGMA table_info(iteration)")}
        if "request_id" not in columns:
            return []
        return [r[0] for r in con.execute("SELECT request_id FROM iteration WHERE request_id != ''")]
    except sqlite3.OperationalError:  # the subprocess is still creating its tables
        return []
    finally:
        con.close()


@pytest.mark.sqlite_only  # watches the SQLite file directly (tests/test_workers.py kills workers on PostgreSQL)
@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_kill_9_while_a_service_works_then_resume_polls_the_request_instead_of_paying_twice(
        service: Service, tmp_path: Path, isolated_data_dir: Path, monkeypatch: pytest.MonkeyPatch, settings, engine) -> None:  # type: ignore[no-untyped-def]
    emulator = service.emulator().start()
    try:
        service.hold(emulator, True)
        env = service.env(emulator)
        prompts = write_prompt_set(tmp_path / "set.json", make_prompts(2))
        proc = subprocess.Popen([PYTHON, "-m", "pipeline", "run", str(prompts), "--providers", service.name, "--iterations", "1",
                                 "--concurrency", "2"], cwd=ROOT, env=subprocess_env(isolated_data_dir, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        db = isolated_data_dir / "darkroom.db"
        deadline = time.monotonic() + 90
        while len(_recorded_requests(db)) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the requests were never recorded"
            time.sleep(0.05)
        submitted = sorted(_recorded_requests(db))
        proc.send_signal(signal.SIGKILL)  # the service keeps working on both requests
        proc.communicate(timeout=30)
        submits = [r for r in emulator.calls("POST") if r.path.startswith(service.submit_path)]
        assert len(submits) == 2

        service.hold(emulator, False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        resumed = run_cli("resume", "1")
        assert resumed.code == 0, resumed.out + resumed.err
        assert "2 completed, 0 failed, 0 blocked of 2" in resumed.out
        submits = [r for r in emulator.calls("POST") if r.path.startswith(service.submit_path)]
        assert len(submits) == 2, "a request already submitted was submitted (and paid for) again"

        with session(engine) as s:
            its = s.exec(select(Iteration).order_by(Iteration.id)).all()
            assert [it.status for it in its] == ["ok", "ok"]
            assert sorted(it.request_id for it in its) == submitted
            for it in its:
                assert it.source_url.startswith(emulator.url)
                assert it.service_meta["service"] == service.name and it.service_meta["response"]
                image = isolated_data_dir / "runs" / "1" / it.image_path
                assert image.is_file()
                sidecar = json.loads((image.parent / "iteration_1_results.json").read_text(encoding="utf-8"))
                assert (sidecar["request_id"], sidecar["source_url"]) == (it.request_id, it.source_url) and sidecar["service_metadata"]
            assert [i.status for i in s.exec(select(RunItem))] == ["completed", "completed"]
            ok = s.exec(select(ProviderCall).where(ProviderCall.operation == "generate", ProviderCall.outcome == "ok")).all()
            assert len(ok) == 2  # each image paid for and logged once
    finally:
        emulator.stop()
