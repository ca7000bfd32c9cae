"""The REST API over real HTTP: uvicorn on a loopback port, httpx as the client, the offline stack behind it.

One state with the dashboard and the CLI: runs the API starts are the runs ``control`` lists,
reviews written through ``pipeline.review.ratings`` (the Gallery's path) come back from the API,
and the export is the dashboard's manifest.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import signal
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlmodel import select

from pipeline.api.reads import ACTIVE_FRESH_S
from pipeline.api.settings import ApiSettings
from pipeline.api.tokens import REMEMBER_S
from pipeline.review.export import manifest_rows
from pipeline.review.ratings import rate
from pipeline.runs import control
from pipeline.runs.background import BackgroundRunner
from pipeline.store.db import session
from pipeline.store.models import ApiToken, Iteration, Run
from tests.apiserver import client, serving
from tests.conftest import PYTHON, ROOT, free_port, make_prompts, run_cli, subprocess_env, write_prompt_set

PROBLEM = "application/problem+json"


def prompt_set(n: int = 3) -> dict:
    return {"name": "api set", "prompts": make_prompts(n)}


def sse_events(c: httpx.Client, run_id: int, timeout: float = 60) -> list[tuple[str, dict]]:
    """Read the run's event stream until its ``end`` event."""
    events, name = [], ""
    deadline = time.monotonic() + timeout
    with c.stream("GET", f"/v1/runs/{run_id}/events") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            assert time.monotonic() < deadline, "the stream did not end"
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
                if name == "end":
                    return events
    raise AssertionError(f"the stream closed without an end event: {events}")


def wait_for(c: httpx.Client, run_id: int, *statuses: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = c.get(f"/v1/runs/{run_id}").json()
        if run["status"] in statuses:
            return run
        assert time.monotonic() < deadline, f"run {run_id} stayed {run['status']}"
        time.sleep(0.1)


def is_problem(r: httpx.Response, status: int, slug: str = "") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in r.text
    if slug:
        assert body["type"] == f"urn:darkroom:problem:{slug}", body
    return body


# ---- run → events → items → review → export -------------------------------------------------------
def test_a_run_started_over_http_streams_progress_then_its_items_reviews_and_export(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as ops, \
            client(base, engine, "rita", "reviewer") as rita:
        r = ops.post("/v1/runs", json={"prompt_set": prompt_set(3), "iterations": 2, "name": "from the API"})
        assert r.status_code == 202, r.text
        run = r.json()
        assert r.headers["location"] == f"/v1/runs/{run['id']}" and run["status"] in ("queued", "running") and run["total"] == 3
        # The dashboard's Runs page reads the same rows.
        assert [s.name for s in control.summaries(engine)] == ["from the API"]

        events = sse_events(rita, run["id"])
        names = [n for n, _ in events]
        assert names[-1] == "end" and events[-1][1]["status"] == "completed" and events[-1][1]["completed"] == 3
        assert {e["prompt_key"] for n, e in events if n == "item" and e["status"] == "completed"} == {"p000", "p001", "p002"}
        assert "progress" in names

        page = rita.get(f"/v1/runs/{run['id']}/items").json()
        assert [i["prompt_id"] for i in page["data"]] == ["p000", "p001", "p002"] and page["next_cursor"] is None
        first = page["data"][0]
        assert [it["number"] for it in first["iterations"]] == [1, 2]
        one, two = first["iterations"]
        assert one["diff"] is None and two["diff"] and {p["op"] for p in two["diff"]} <= {"equal", "insert", "delete"}
        assert "".join(p["text"] for p in two["diff"] if p["op"] != "delete") == two["prompt"]
        assert 0 <= one["evaluation"]["score"] <= 10 and first["best_iteration"] in (1, 2)
        assert one["reviews"]["mine"] is None and one["links"]["image"] == f"/v1/images/{one['id']}"

        r = rita.put(f"/v1/images/{one['id']}/review", json={"stars": 5, "decision": "approved", "note": "keep"})
        assert r.status_code == 200, r.text
        assert r.json()["reviews"]["mine"]["stars"] == 5 and r.json()["reviews"]["decision"] == "approved"
        r = rita.put(f"/v1/images/{one['id']}/review", json={"note": "keep this one"})  # only the note changes
        assert r.json()["reviews"]["mine"] == {**r.json()["reviews"]["mine"], "stars": 5, "decision": "approved", "note": "keep this one"}

        z = rita.get(f"/v1/runs/{run['id']}/export.zip", params={"selection": "approved"})
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        assert int(z.headers["content-length"]) == len(z.content)  # worked out before the first byte: a download's progress
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        assert names == [f"p000/{Path(one_path(engine, one['id'])).name}", "manifest.csv", "manifest.json"]
        image = zf.getinfo(names[0])
        assert image.compress_type == zipfile.ZIP_STORED
        assert hashlib.sha256(zf.read(names[0])).hexdigest() == one["sha256"]
        manifest = json.loads(zf.read("manifest.json"))
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
    with session(engine) as s:  # the dashboard's manifest, row for row
        expected = [{k: v for k, v in row.items() if not k.startswith("_")}
                    for row in manifest_rows(s, settings, [run["id"]], selection="approved")]
    assert manifest["images"] == expected and manifest["selection"] == "approved"
    assert rows[0]["note"] == "keep this one" and rows[0]["reviewer"] == "rita" and rows[0]["rita: stars"] == "5"


def one_path(engine, iteration_id: int) -> str:
    with session(engine) as s:
        return s.get(Iteration, iteration_id).image_path


def test_a_review_made_in_the_gallery_is_returned_by_the_api(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as ops, \
            client(base, engine, "rita", "reviewer") as rita:
        run_id = ops.post("/v1/runs", json={"prompt_set": prompt_set(1), "iterations": 1}).json()["id"]
        wait_for(ops, run_id, "completed")
        before = rita.get(f"/v1/runs/{run_id}/items")  # a stopped run's page is kept … until a review changes it
        assert before.json()["data"][0]["iterations"][0]["reviews"]["others"] == []
        assert rita.get(f"/v1/runs/{run_id}/items", headers={"If-None-Match": before.headers["etag"]}).status_code == 304
        with session(engine) as s:
            image = s.exec(select(Iteration.id).where(Iteration.status == "ok")).one()
            rate(s, image, "gina", stars=2, decision="rejected", note="too dark")  # what the Gallery page calls
            s.commit()
        after = rita.get(f"/v1/runs/{run_id}/items")
        assert after.headers["etag"] != before.headers["etag"]
        item = after.json()["data"][0]
        reviews = item["iterations"][0]["reviews"]
        assert reviews["mine"] is None
        assert [(o["reviewer"], o["stars"], o["decision"], o["note"]) for o in reviews["others"]] == [("gina", 2, "rejected", "too dark")]
        assert reviews["decision"] == "rejected" and reviews["mean_stars"] == 2


def test_an_active_runs_page_shows_new_reviews_at_once_and_changes_in_place_within_a_second(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as ops:
        run_id = ops.post("/v1/runs", json={"prompt_set": prompt_set(1), "iterations": 1}).json()["id"]
        wait_for(ops, run_id, "completed")
    with session(engine) as s:  # as if a runner in another process were still at work on it
        s.execute(text("UPDATE run SET status = 'running' WHERE id = :id"), {"id": run_id})
        s.commit()
    with serving(settings, engine, runner=False) as base, client(base, engine, "rita", "reviewer") as rita:
        first = rita.get(f"/v1/runs/{run_id}/items")
        assert first.json()["run"]["status"] == "running" and first.json()["data"][0]["cost_usd"] == 0
        plain = rita.get(f"/v1/runs/{run_id}/items", headers={"Accept-Encoding": "identity"})  # gzip only for clients that take it
        assert first.headers["content-encoding"] == "gzip" and "content-encoding" not in plain.headers
        assert plain.json() == first.json() and int(first.headers["content-length"]) < len(plain.content)
        with session(engine) as s:
            image = s.exec(select(Iteration.id).where(Iteration.status == "ok")).one()
            rate(s, image, "gina", stars=4)  # a new review: seen by the next request
            s.commit()
        reviewed = rita.get(f"/v1/runs/{run_id}/items")
        assert reviewed.headers["etag"] != first.headers["etag"]
        assert reviewed.json()["data"][0]["iterations"][0]["reviews"]["others"][0]["stars"] == 4
        with session(engine) as s:  # a value changed in place (no new row): seen within a second
            s.execute(text("UPDATE run_item SET cost_usd = 0.25 WHERE run_id = :id"), {"id": run_id})
            s.commit()
        time.sleep(ACTIVE_FRESH_S + 0.1)
        assert rita.get(f"/v1/runs/{run_id}/items").json()["data"][0]["cost_usd"] == 0.25


# ---- cancel and resume -------------------------------------------------------------------------------
def test_cancel_then_resume_and_a_completed_run_cannot_be_resumed(settings, engine) -> None:
    # No runner in the API process: the run waits queued, as when only the dashboard executes runs.
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as ops:
        ready = ops.get("/ready").json()
        assert ready["status"] == "ready" and ready["runner"] == "not run by this server"
        run_id = ops.post("/v1/runs", json={"prompt_set": prompt_set(2), "iterations": 1}).json()["id"]
        r = ops.post(f"/v1/runs/{run_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = ops.post(f"/v1/runs/{run_id}/resume", json={})
        assert r.status_code == 202 and r.json()["status"] == "queued"
        dashboard = BackgroundRunner(engine, settings, poll_seconds=0.1)  # the dashboard's runner picks it up
        dashboard.start(log_to_file=False)
        try:
            assert wait_for(ops, run_id, "completed")["completed"] == 2
        finally:
            dashboard.stop()
        body = is_problem(ops.post(f"/v1/runs/{run_id}/resume"), 409, "run-state")
        assert "already completed" in body["detail"]
        is_problem(ops.post(f"/v1/runs/{run_id}/cancel"), 409, "run-state")
        r = ops.post(f"/v1/runs/{run_id}/resume", json={"retry_failed": True})  # nothing failed: queued again, nothing to do
        assert r.status_code == 202


def test_cancelling_a_running_run_stops_it_and_resume_finishes_it(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as ops:
        run_id = ops.post("/v1/runs", json={"prompt_set": prompt_set(12), "iterations": 3, "concurrency": 1}).json()["id"]
        wait_for(ops, run_id, "running")
        assert ops.post(f"/v1/runs/{run_id}/cancel").status_code == 200
        cancelled = wait_for(ops, run_id, "cancelled")
        assert cancelled["completed"] < 12
        assert ops.post(f"/v1/runs/{run_id}/resume").status_code == 202
        assert wait_for(ops, run_id, "completed", timeout=120)["completed"] == 12


# ---- idempotency --------------------------------------------------------------------------------------
def test_a_retried_request_with_its_idempotency_key_never_starts_a_second_run(settings, engine) -> None:
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as ops:
        body = {"prompt_set": prompt_set(2), "iterations": 1}
        first = ops.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-17"})
        again = ops.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-17"})
        assert first.status_code == again.status_code == 202
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        is_problem(ops.post("/v1/runs", json={**body, "iterations": 2}, headers={"Idempotency-Key": "order-17"}), 422,
                   "idempotency-key-reused")
        # Ten retries at once: one run.
        answers: list[httpx.Response] = []

        def post() -> None:
            with httpx.Client(base_url=base, headers=dict(ops.headers), timeout=60) as c:
                answers.append(c.post("/v1/runs", json=body, headers={"Idempotency-Key": "burst-1"}))

        threads = [threading.Thread(target=post) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        ids = {a.json()["id"] for a in answers if a.status_code == 202}
        assert len(ids) == 1 and {a.status_code for a in answers} <= {202, 409}
        # A request that failed keeps nothing: fixed, it may be retried with its key.
        is_problem(ops.post("/v1/generate", json={"prompt": "", "wait": False}, headers={"Idempotency-Key": "g-1"}), 422)
        g1 = ops.post("/v1/generate", json={"prompt": "a golden bell"}, headers={"Idempotency-Key": "g-1"})
        g2 = ops.post("/v1/generate", json={"prompt": "a golden bell"}, headers={"Idempotency-Key": "g-1"})
        assert g1.status_code == g2.status_code == 202 and g1.json()["run"]["id"] == g2.json()["run"]["id"]
        # Keys belong to their token: another operator's same key is another request.
        with client(base, engine, "ops2", "operator") as other:
            assert other.post("/v1/runs", json=body, headers={"Idempotency-Key": "order-17"}).json()["id"] != first.json()["id"]
    with session(engine) as s:
        assert len(s.exec(select(Run)).all()) == 4  # order-17, burst-1, g-1, ops2's order-17


# ---- errors -------------------------------------------------------------------------------------------
def test_prompt_set_problems_carry_the_json_paths_the_cli_prints(settings, engine, tmp_path: Path) -> None:
    bad = {"prompts": [{"id": "a", "prompt": "a fox"}, {"id": "a", "prompt": 7}, {"id": "b/c", "prompt": "x", "seed": "one"}]}
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as ops:
        body = is_problem(ops.post("/v1/runs", json={"prompt_set": bad}), 422, "invalid-prompt-set")
        checked = is_problem(ops.post("/v1/prompts/validate", json={"prompt_set": bad}), 422, "invalid-prompt-set")
    cli = run_cli("run", write_prompt_set(tmp_path / "bad.json", bad["prompts"]))
    assert cli.code == 2
    assert body["errors"] == checked["errors"] and len(body["errors"]) >= 3
    for problem in body["errors"]:
        assert f"{problem['path']}: {problem['message']}" in cli.err
    with session(engine) as s:
        assert s.exec(select(Run)).all() == []  # nothing written


def test_each_error_class_is_a_problem_with_its_status(settings, engine, monkeypatch) -> None:
    small = dataclasses.replace(ApiSettings.from_settings(settings), max_body_bytes=2_000, rate_per_s=0.01, rate_burst=40)
    with serving(settings, engine, runner=False, api=small) as base, client(base, engine, "ops", "operator") as ops:
        is_problem(ops.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"}), 400, "malformed-json")
        r = httpx.get(f"{base}/v1/runs")
        is_problem(r, 401, "unauthenticated")
        assert r.headers["www-authenticate"].startswith("Bearer")
        is_problem(httpx.get(f"{base}/v1/runs", headers={"Authorization": "Bearer drk_not-a-real-token"}), 401)
        is_problem(ops.get("/v1/runs/999"), 404, "run-not-found")
        is_problem(ops.get("/v1/images/999"), 404, "image-not-found")
        is_problem(ops.get("/v1/nowhere"), 404)
        is_problem(ops.post("/v1/runs", json={"prompt_set": {"prompts": make_prompts(40)}}), 413, "too-large")
        is_problem(ops.post("/v1/runs", content=(b"x" * 1000 for _ in range(5)),  # chunked, no Content-Length
                            headers={"content-type": "application/json"}), 413)
        chunks = (b'{"prompt_set": {"prompts": []}, "name": "' + b"x" * 1000 + b'"}' if i == 0 else b" " * 1000 for i in range(5))
        is_problem(ops.post("/v1/prompts/validate", content=chunks, headers={"content-type": "application/json"}), 413, "too-large")
        is_problem(ops.post("/v1/runs", content=b"prompts", headers={"content-type": "text/plain"}), 415)
        body = is_problem(ops.post("/v1/runs", json={"prompt_set": prompt_set(1), "iterations": 99}), 422, "invalid-input")
        assert body["field"] == "iterations"
        body = is_problem(ops.post("/v1/runs", json={"prompt_set": prompt_set(1), "colour": "red"}), 422, "invalid-request")
        assert body["errors"][0]["path"] == "colour"
        is_problem(ops.post("/v1/runs", json={"prompt_set": prompt_set(1), "providers": ["nonesuch"]}), 422)
        is_problem(ops.get("/v1/runs", params={"cursor": "garbage"}), 422, "invalid-cursor")

        def broken(*_a, **_k):
            raise RuntimeError("database said something internal")

        monkeypatch.setattr("pipeline.api.routes.runs.run_ids_page", broken)  # a bug: answered, logged, never shown
        body = is_problem(ops.get("/v1/runs"), 500, "internal")
        assert "database said" not in json.dumps(body)
        while (r := ops.get("/health")).status_code == 200 and (r := ops.get("/v1/runs/1")).status_code != 429:
            pass
        body = is_problem(r, 429, "rate-limited")
        assert int(r.headers["retry-after"]) >= 1


# ---- tokens and roles ---------------------------------------------------------------------------------
def test_roles_limit_what_a_token_may_do_and_tokens_are_stored_hashed(settings, engine) -> None:
    made = run_cli("token", "create", "--name", "root", "--role", "admin")
    assert made.code == 0, made.err
    admin_token = made.out.strip().splitlines()[-1]
    assert admin_token.startswith("drk_")
    with session(engine) as s:
        stored = s.exec(select(ApiToken)).one()
        assert stored.token_hash == hashlib.sha256(admin_token.encode()).hexdigest()
        dump = " ".join(str(v) for row in s.execute(text("SELECT * FROM api_token")).all() for v in row)
        assert admin_token not in dump
    listed = run_cli("token", "list")
    assert "root" in listed.out and "admin" in listed.out and admin_token not in listed.out

    with contextlib.ExitStack() as stack, serving(settings, engine, runner=False) as base, \
            httpx.Client(base_url=base, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60) as admin:
        made = admin.post("/v1/tokens", json={"name": "rita", "role": "reviewer"})
        assert made.status_code == 201
        rita = stack.enter_context(httpx.Client(base_url=base, headers={"Authorization": f"Bearer {made.json()['token']}"}, timeout=60))
        assert all("token" not in t and "token_hash" not in t for t in admin.get("/v1/tokens").json()["data"])
        with client(base, engine, "ops", "operator") as ops:
            run_id = ops.post("/v1/runs", json={"prompt_set": prompt_set(1)}).json()["id"]
            assert rita.get(f"/v1/runs/{run_id}").status_code == 200  # reviewers read
            is_problem(rita.post("/v1/runs", json={"prompt_set": prompt_set(1)}), 403, "forbidden")  # … but do not run
            is_problem(rita.post(f"/v1/runs/{run_id}/cancel"), 403)
            is_problem(ops.get("/v1/tokens"), 403)  # operators run, but do not manage tokens
            is_problem(ops.post("/v1/tokens", json={"name": "x"}), 403)
            assert ops.post(f"/v1/runs/{run_id}/cancel").status_code == 200
        assert admin.delete("/v1/tokens/rita").json()["revoked_at"]
        is_problem(rita.get(f"/v1/runs/{run_id}"), 401)  # revoked: refused at once
        assert run_cli("token", "revoke", "root").code == 0  # by another process: refused within the second a token is remembered
        time.sleep(REMEMBER_S + 0.1)
        is_problem(admin.get("/v1/tokens"), 401)
    assert run_cli("token", "create", "--name", "x", "--role", "boss").code == 2


# ---- images, providers, validate, generate, health, metrics ------------------------------------------------
def test_images_have_etags_ranges_and_thumbnails(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "rita", "operator") as c:
        run_id = c.post("/v1/runs", json={"prompt_set": prompt_set(1), "iterations": 1}).json()["id"]
        wait_for(c, run_id, "completed")
        it = c.get(f"/v1/runs/{run_id}/items").json()["data"][0]["iterations"][0]
        full = c.get(it["links"]["image"])
        assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
        assert hashlib.sha256(full.content).hexdigest() == it["sha256"] and full.headers["etag"] == f'"{it["sha256"]}"'
        assert c.get(it["links"]["image"], headers={"If-None-Match": full.headers["etag"]}).status_code == 304
        part = c.get(it["links"]["image"], headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == full.content[10:20]
        assert part.headers["content-range"] == f"bytes 10-19/{len(full.content)}"
        assert c.get(it["links"]["image"], headers={"Range": f"bytes={len(full.content) + 5}-"}).status_code == 416
        thumb = c.get(it["links"]["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8" and len(thumb.content) < len(full.content)
        assert c.get(it["links"]["thumbnail"], headers={"If-None-Match": thumb.headers["etag"]}).status_code == 304
        assert full.headers["x-content-type-options"] == "nosniff"


def test_providers_say_what_is_missing_and_never_show_a_key(settings, engine, monkeypatch) -> None:
    monkeypatch.setenv("FAL_KEY", "test-value-not-a-real-key-4711")
    with serving(settings, engine, runner=False) as base, client(base, engine, "rita", "reviewer") as c:
        r = c.get("/v1/providers")
    assert r.status_code == 200 and "test-value-not-a-real-key-4711" not in r.text
    by = {(p["kind"], p["name"]): p for p in r.json()["data"]}
    assert by[("providers", "offline")]["ready"] and by[("providers", "offline")]["capabilities"]["text_to_image"]
    assert by[("providers", "fal")]["key_present"] and by[("providers", "fal")]["ready"]
    missing = by[("providers", "openai")]
    assert not missing["ready"] and missing["missing"] == [missing["key_env_var"]]
    assert by[("providers", "offline")]["breaker"]["state"] == "closed"


def test_validate_checks_and_estimates_without_creating_a_run(settings, engine) -> None:
    with serving(settings, engine, runner=False) as base, client(base, engine, "rita", "reviewer") as c:
        r = c.post("/v1/prompts/validate", json={"prompt_set": prompt_set(4), "iterations": 3})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["valid"] and body["prompts"] == 4 and body["estimate"]["generations"] == 12
        assert [a["id"] for a in body["analysis"]] == ["p000", "p001", "p002", "p003"]
        assert body["composed"][0]["text"].startswith("A red lantern on a hill")
        is_problem(c.post("/v1/prompts/validate", json={"prompt_set": prompt_set(1), "iterations": 0}), 422, "invalid-input")
    with session(engine) as s:
        assert s.exec(select(Run)).all() == []


def test_generate_waits_for_the_images_and_links_them(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as c:
        r = c.post("/v1/generate", json={"prompt": "a violet kite over the sea", "wait": True, "seed": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["run"]["status"] == "completed" and len(body["images"]) == 1
        image = body["images"][0]
        assert image["provider"] == "offline" and image["seed"] == 7 and image["best"]
        assert c.get(image["links"]["image"]).content[:2] == b"\xff\xd8"


def test_health_ready_metrics_and_cors_off_by_default(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as c:
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        ready = httpx.get(f"{base}/ready")
        assert ready.status_code == 200 and ready.json()["runner"] == "alive"
        wait_for(c, c.post("/v1/runs", json={"prompt_set": prompt_set(1), "iterations": 1}).json()["id"], "completed")
        text_ = c.get("/metrics").text
        assert 'darkroom_runs{status="completed"} 1' in text_
        assert 'darkroom_provider_calls_total{service="offline",operation="generate",outcome="ok"} 1' in text_
        assert 'darkroom_provider_call_latency_seconds_count{service="offline",operation="generate"} 1' in text_
        assert 'darkroom_api_requests_total{method="POST",route="/v1/runs",status="202"} 1' in text_
        is_problem(httpx.get(f"{base}/metrics"), 401)
        pre = httpx.options(f"{base}/v1/runs", headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in pre.headers


def test_a_zip_bundle_upload_gets_the_bundle_checks(settings, engine) -> None:
    def bundle(members: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        return buf.getvalue()

    good = bundle({"prompts.json": json.dumps(prompt_set(2)).encode()})
    evil = bundle({"prompts.json": json.dumps({"prompts": [{"id": "a", "prompt": "x", "reference_images": ["../../etc/passwd"]}]}).encode()})
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as c:
        r = c.post("/v1/runs", files={"prompt_set": ("set.zip", good, "application/zip")}, data={"options": '{"iterations": 1}'})
        assert r.status_code == 202, r.text
        assert r.json()["total"] == 2 and r.json()["config"]["iterations"] == 1
        body = is_problem(c.post("/v1/runs", files={"prompt_set": ("evil.zip", evil, "application/zip")}), 422, "invalid-prompt-set")
        assert body["errors"][0]["path"].startswith("prompts[0].reference_images")
        is_problem(c.post("/v1/runs", files={"prompt_set": ("x.zip", b"PK\x03\x04broken", "application/zip")}), 422)


def test_runs_are_listed_newest_first_a_page_at_a_time(settings, engine) -> None:
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as c:
        ids = [c.post("/v1/runs", json={"prompt_set": prompt_set(1), "name": f"run {i}"}).json()["id"] for i in range(5)]
        c.post(f"/v1/runs/{ids[0]}/cancel")
        seen, cursor = [], None
        while True:
            page = c.get("/v1/runs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
            seen += [r["id"] for r in page["data"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)
        assert [r["id"] for r in c.get("/v1/runs", params={"status": "cancelled"}).json()["data"]] == [ids[0]]
        assert [r["name"] for r in c.get("/v1/runs", params={"q": "RUN 3"}).json()["data"]] == ["run 3"]


@pytest.mark.parametrize("path", ["/v1/runs/1/items", "/v1/runs/1/events", "/v1/runs/1/export.zip", "/v1/images/1/thumbnail"])
def test_reading_routes_need_a_token(settings, engine, path: str) -> None:
    with serving(settings, engine, runner=False) as base:
        is_problem(httpx.get(f"{base}{path}"), 401)


def test_serve_starts_the_api_with_its_runner_on_localhost_and_stops_cleanly(isolated_data_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([PYTHON, "-m", "pipeline", "serve", "--port", str(port)], cwd=ROOT, env=subprocess_env(isolated_data_dir),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
                    break
                except httpx.HTTPError:
                    assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                    time.sleep(0.2)
            assert ready.status_code == 200 and ready.json()["runner"] == "alive"
            assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
        finally:
            proc.terminate()
            code = proc.wait(30)
    assert code in (0, -signal.SIGTERM)  # uvicorn shuts down gracefully, then ends by the signal it was sent
    out = (tmp_path / "serve.log").read_text()
    assert f"Darkroom API on http://127.0.0.1:{port}" in out and "token create" in out and "Traceback" not in out
    bad = run_cli("serve", "--port", "70000")
    assert bad.code == 2 and "--port: 70000 is not a port number" in bad.err
