"""Projects, delete, prune, doctor and du: a crash at any step leaves a tree the doctor finds clean once finished."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from pipeline.config import Settings
from pipeline.errors import BudgetReached, InputError, RunStateError
from pipeline.resilience.budget import Budget
from pipeline.runs import control, doctor, retention
from pipeline.runs.runner import RunExecutor
from pipeline.runs.usage import storage_report
from pipeline.store.db import session, sqlite_path
from pipeline.store.models import Iteration, Project, Rating, Run, RunItem, Thumbnail, utcnow
from tests.conftest import make_prompts, run_cli, write_prompt_set


class Crash(Exception):
    pass


def crash_at(k: int) -> tuple[list[str], retention.Checkpoint]:
    """A checkpoint that fails at its k-th call (counting from 0); the list records the steps passed."""
    seen: list[str] = []

    def checkpoint(step: str) -> None:
        if len(seen) == k:
            raise Crash(step)
        seen.append(step)

    return seen, checkpoint


def launch_and_run(engine, settings: Settings, tmp_path: Path, *, prompts: int = 3, iterations: int = 2,  # type: ignore[no-untyped-def]
                   project: str | None = None) -> int:
    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig

    spec = load_file(write_prompt_set(tmp_path / f"set{prompts}.json", make_prompts(prompts)))
    run_id = control.launch(engine, settings, spec, RunConfig(iterations=iterations), project=project)
    asyncio.run(RunExecutor(engine, settings, run_id).execute())
    return run_id


def image_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("iteration_*") if p.suffix in (".jpg", ".png", ".webp")}


def problems(engine, settings: Settings) -> list[doctor.Finding]:  # type: ignore[no-untyped-def]
    return doctor.examine(engine, settings)


# ---- Projects ----------------------------------------------------------------------------------
def test_a_projects_runs_live_in_its_folder_readable_without_the_database(engine, settings: Settings, tmp_path: Path) -> None:
    run_id = launch_and_run(engine, settings, tmp_path, prompts=2, iterations=1, project="Spring Book / 2027")
    folder = settings.runs_dir / "spring-book-2027"
    assert json.loads((folder / "project.json").read_text())["name"] == "Spring Book / 2027"
    described = json.loads((folder / str(run_id) / "run.json").read_text())
    assert described["project"] == "Spring Book / 2027" and described["run_id"] == run_id
    assert len(image_files(folder / str(run_id))) == 2
    plain = launch_and_run(engine, settings, tmp_path, prompts=1, iterations=1)  # no project: the default one, flat as before
    assert (settings.runs_dir / str(plain) / "run.json").is_file()
    with session(engine) as s:
        names = {r.id: s.get(Project, r.project_id).name for r in s.exec(select(Run))}  # type: ignore[union-attr]
    assert names == {run_id: "Spring Book / 2027", plain: "default"}


def test_project_defaults_fill_the_options_a_run_does_not_give(settings: Settings, tmp_path: Path) -> None:
    assert run_cli("projects", "add", "Atlas", "--default-iterations", "1", "--default-style", "ink wash").code == 0
    prompts = write_prompt_set(tmp_path / "p.json", make_prompts(1))
    assert run_cli("run", prompts, "--project", "Atlas").code == 0
    assert run_cli("run", prompts, "--project", "Atlas", "--iterations", "3").code == 0
    from pipeline.store.db import open_database

    with session(open_database(settings)) as s:
        runs = list(s.exec(select(Run).order_by(col(Run.id))))
        sent = s.exec(select(Iteration.prompt_text)).first()
    assert [r.config["iterations"] for r in runs] == [1, 3]
    assert runs[0].config["style"] == "ink wash" and sent is not None and "Style: ink wash" in sent
    listing = run_cli("projects").out
    assert "Atlas" in listing and '"style": "ink wash"' in listing


def test_a_projects_cap_counts_what_its_other_runs_spent() -> None:
    budget = Budget(None, spent_usd=0.0, project_cap_usd=1.0, project_spent_usd=0.95, project_name="Atlas")
    budget.reserve(0.04, "a generation")
    with pytest.raises(BudgetReached, match="project 'Atlas'"):
        budget.reserve(0.02, "a generation")


def test_runs_of_a_capped_project_pause_when_the_project_has_spent_its_cap(engine, settings: Settings, tmp_path: Path) -> None:
    from pipeline.prompts.promptset import load_file
    from pipeline.runs.records import RunConfig

    with session(engine) as s:
        s.add(Project(name="Tight", slug="tight", budget_usd=0.025))
        s.commit()
    spec = load_file(write_prompt_set(tmp_path / "f.json", make_prompts(2)))
    first = control.launch(engine, settings, spec, RunConfig(providers=["fake"], iterations=1, concurrency=1), project="Tight")
    asyncio.run(RunExecutor(engine, settings, first).execute())  # two generations at $0.01: within the cap
    second = control.launch(engine, settings, spec, RunConfig(providers=["fake"], iterations=1, concurrency=1), project="Tight")
    outcome = asyncio.run(RunExecutor(engine, settings, second).execute())
    assert outcome.status == "paused" and "project 'Tight'" in outcome.error and outcome.completed == 0


# ---- Delete ------------------------------------------------------------------------------------
def test_deleting_a_run_survives_a_crash_at_every_step(engine, settings: Settings, tmp_path: Path) -> None:
    keep = launch_and_run(engine, settings, tmp_path, prompts=1, iterations=1)
    kept_images = image_files(settings.runs_dir / str(keep))
    k = 0
    while True:
        run_id = launch_and_run(engine, settings, tmp_path, prompts=2, iterations=2, project="Doomed")
        (settings.exports_dir).mkdir(parents=True, exist_ok=True)
        (settings.exports_dir / f"darkroom_run-{run_id}_all_x.zip").write_bytes(b"zip")
        steps, checkpoint = crash_at(k)
        try:
            retention.delete_run(engine, settings, run_id, checkpoint)
        except Crash:
            # Half-way: the run is marked, so nothing is reported as damage, only a delete to finish.
            assert {f.kind for f in problems(engine, settings)} <= {"unfinished"}
            with session(engine) as s:
                left = s.get(Run, run_id) is not None
            if left:  # (a crash after the last step leaves nothing to finish)
                with pytest.raises(RunStateError, match="being deleted"):
                    control.resume(engine, settings, run_id)
                retention.delete_run(engine, settings, run_id)  # running it again finishes it
            k += 1
        else:
            assert k == len(steps) and k >= 5, steps  # marked, exports, two prompt folders, files, rows
            break
        assert problems(engine, settings) == []
        with session(engine) as s:
            assert s.get(Run, run_id) is None
        assert not (settings.runs_dir / "doomed" / str(run_id)).exists()
        assert not list(settings.exports_dir.glob(f"darkroom_run-{run_id}_*"))
    with session(engine) as s:
        assert [r.id for r in s.exec(select(Run))] == [keep]
        assert s.exec(select(Thumbnail)).all()  # the other run's thumbnails stay
    assert image_files(settings.runs_dir / str(keep)) == kept_images


def test_deleting_a_project_survives_a_crash_at_every_step(engine, settings: Settings, tmp_path: Path) -> None:
    k = 0
    while True:
        name = f"Client {k}"
        for _ in range(2):
            launch_and_run(engine, settings, tmp_path, prompts=1, iterations=1, project=name)
        plan = retention.plan_project_delete(engine, settings, name)
        assert len(plan.runs) == 2 and plan.images == 2 and plan.bytes_on_disk > 0
        steps, checkpoint = crash_at(k)
        try:
            retention.delete_project(engine, settings, name, checkpoint)
        except Crash:
            assert {f.kind for f in problems(engine, settings)} <= {"unfinished"}
            assert "doctor --repair" not in " ".join(doctor.repair(engine, settings, problems(engine, settings)))
            k += 1
        else:
            assert k == len(steps), steps
            break
        assert problems(engine, settings) == []
        with session(engine) as s:
            assert s.exec(select(Project).where(Project.name == name)).first() is None
        assert not any(p.name.startswith("client") for p in settings.runs_dir.iterdir())
    assert k >= 8


def test_a_running_run_cannot_be_deleted_and_the_default_project_stays(engine, settings: Settings, tmp_path: Path) -> None:
    run_id = launch_and_run(engine, settings, tmp_path, prompts=1, iterations=1)
    with session(engine) as s:
        s.get(Run, run_id).status = "queued"  # type: ignore[union-attr]
        s.commit()
    with pytest.raises(RunStateError, match="cancel it first"):
        retention.delete_run(engine, settings, run_id)
    with pytest.raises(InputError, match="default project"):
        retention.delete_project(engine, settings, "default")


def test_delete_from_the_command_line_names_what_goes(settings: Settings, tmp_path: Path) -> None:
    prompts = write_prompt_set(tmp_path / "p.json", make_prompts(2))
    assert run_cli("run", prompts, "--iterations", "1").code == 0
    refused = run_cli("delete", "run", "1")  # not a terminal: no question can be asked
    assert refused.code == 2 and "--yes" in refused.err and (settings.runs_dir / "1").exists()
    done = run_cli("delete", "run", "1", "--yes")
    assert done.code == 0 and "1 run(s), 2 image(s)" in done.out and not (settings.runs_dir / "1").exists()
    assert run_cli("doctor").code == 0


# ---- Prune -------------------------------------------------------------------------------------
def rate(engine, iteration_id: int, decision: str) -> None:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        s.add(Rating(iteration_id=iteration_id, reviewer="ana", decision=decision, decided_at=utcnow()))
        s.commit()


def iterations_of(engine, run_id: int) -> list[Iteration]:  # type: ignore[no-untyped-def]
    with session(engine) as s:
        return list(s.exec(select(Iteration).join(RunItem, col(RunItem.id) == Iteration.run_item_id)
                           .where(RunItem.run_id == run_id).order_by(col(Iteration.id))))


def test_prune_policies_keep_approvals_best_images_and_active_runs(engine, settings: Settings, tmp_path: Path) -> None:
    run_id = launch_and_run(engine, settings, tmp_path, prompts=3, iterations=2)
    its = iterations_of(engine, run_id)
    with session(engine) as s:
        best = {(it.run_item_id, it.number) for it in its
                if s.get(RunItem, it.run_item_id).final_iteration == it.number}  # type: ignore[union-attr]
    not_best = [it for it in its if (it.run_item_id, it.number) not in best]
    approved, rejected = not_best[0], next(it for it in its if (it.run_item_id, it.number) in best)
    rate(engine, approved.id, "approved")  # type: ignore[arg-type]
    rate(engine, rejected.id, "rejected")  # type: ignore[arg-type]
    active = launch_and_run(engine, settings, tmp_path, prompts=1, iterations=2)
    with session(engine) as s:
        s.get(Run, active).status = "running"  # type: ignore[union-attr]
        s.commit()

    before = image_files(settings.runs_dir)
    dry = retention.prune(engine, settings, retention.PrunePolicy(keep_best=True, drop_rejected=True), dry_run=True)
    assert image_files(settings.runs_dir) == before  # a dry run changes nothing
    expected = {it.id for it in not_best[1:]} | {rejected.id}
    assert {d.iteration_id for d in dry.images} == expected
    assert dry.image_bytes == sum(it.byte_size or 0 for it in its if it.id in expected) and dry.thumbnail_bytes > 0

    done = retention.prune(engine, settings, retention.PrunePolicy(keep_best=True, drop_rejected=True))
    assert {d.iteration_id for d in done.images} == expected
    for it in iterations_of(engine, run_id):
        assert (it.image_path == "") == (it.id in expected)
    assert len(image_files(settings.runs_dir)) == len(before) - len(expected)
    assert problems(engine, settings) == []
    # Older than N days: everything not approved goes, but never the approved image nor the running run's.
    aged = retention.prune(engine, settings, retention.PrunePolicy(older_than_days=1), now=utcnow() + timedelta(days=2))
    assert approved.id not in {d.iteration_id for d in aged.images}
    assert {it.id for it in iterations_of(engine, run_id) if it.image_path} == {approved.id}
    assert all(it.image_path for it in iterations_of(engine, active))


def test_pruning_survives_a_crash_at_every_step(engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)  # several batches, each journaled
    k = 0
    while True:
        run_id = launch_and_run(engine, settings, tmp_path, prompts=3, iterations=2, project=f"P{k}")
        steps, checkpoint = crash_at(k)
        policy = retention.PrunePolicy(keep_best=True, run_ids=(run_id,))
        try:
            retention.prune(engine, settings, policy, checkpoint=checkpoint)
        except Crash:
            assert {f.kind for f in problems(engine, settings)} <= {"unfinished"}
            retention.prune(engine, settings, policy)  # the next prune finishes the interrupted batch first
            k += 1
        else:
            assert k == len(steps) and k >= 6, steps
            break
        assert problems(engine, settings) == []
        kept = [it for it in iterations_of(engine, run_id) if it.image_path]
        assert len(kept) == 3 and all(it.number == 2 or it.number == 1 for it in kept)
        assert len(image_files(settings.runs_dir / f"p{k - 1}" / str(run_id))) == 3


def test_prune_needs_a_policy(settings: Settings) -> None:
    result = run_cli("prune", "--dry-run")
    assert result.code == 2 and "choose at least one policy" in result.err


# ---- Doctor ------------------------------------------------------------------------------------
def test_doctor_finds_and_repairs_what_it_can(engine, settings: Settings, tmp_path: Path) -> None:
    run_id = launch_and_run(engine, settings, tmp_path, prompts=3, iterations=1)
    folder = settings.runs_dir / str(run_id) / "results"
    images = sorted(image_files(folder))
    images[0].unlink()  # missing
    images[1].write_bytes(images[1].read_bytes() + b"x")  # changed
    (folder / "p000" / "stray.png").write_bytes(b"png")  # unknown image
    (settings.runs_dir / "77").mkdir()  # a folder no run knows
    (settings.runs_dir / "77" / "iteration_1.png").write_bytes(b"old")
    (folder / "p002" / ".tmp-123-0-iteration_2.png").write_bytes(b"half")  # temp
    found = {(f.kind, Path(f.path).name) for f in doctor.examine(engine, settings)}
    assert found == {("missing", images[0].name), ("hash", images[1].name), ("unknown", "stray.png"), ("unknown", "77"),
                     ("temp", ".tmp-123-0-iteration_2.png")}
    assert run_cli("doctor").code == 1
    repaired = run_cli("doctor", "--repair")
    assert repaired.code == 1 and "1 problem(s) left" in repaired.out  # the changed image cannot be repaired
    assert [f.kind for f in doctor.examine(engine, settings)] == ["hash"]
    assert (settings.data_dir / "orphans" / "runs" / "77" / "iteration_1.png").read_bytes() == b"old"  # moved, never deleted
    assert {f.kind for f in doctor.examine(engine, settings, hashes=False)} == set()


# ---- du ----------------------------------------------------------------------------------------
@pytest.mark.sqlite_only  # the database file's size
def test_du_figures_match_the_tree_and_the_database_file(engine, settings: Settings, tmp_path: Path) -> None:
    a = launch_and_run(engine, settings, tmp_path, prompts=2, iterations=2, project="Alpha")
    b = launch_and_run(engine, settings, tmp_path, prompts=1, iterations=1)
    report = storage_report(engine, settings)
    on_disk = {r: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
               for r, folder in ((a, settings.runs_dir / "alpha" / str(a)), (b, settings.runs_dir / str(b)))}
    runs = {int(u.name.split()[1]): u for u in report.runs}
    assert {r: u.disk_bytes for r, u in runs.items()} == on_disk
    assert runs[a].images == 4 and runs[b].images == 1
    with session(engine) as s:
        thumbs = {it: len(t.data) for it, t in ((t.iteration_id, t) for t in s.exec(select(Thumbnail)))}
        image_bytes = sum(it.byte_size or 0 for it in s.exec(select(Iteration)))
    path = sqlite_path(settings.database_url)
    assert path is not None
    assert report.database_bytes == path.stat().st_size + (path.with_name(path.name + "-wal").stat().st_size
                                                          if path.with_name(path.name + "-wal").exists() else 0)
    assert sum(u.db_bytes for u in report.runs) == pytest.approx(report.database_bytes, abs=2)  # shared out, nothing lost
    assert min(u.db_bytes for u in report.runs) >= min(thumbs.values())
    assert {u.name: u.images for u in report.projects} == {"Alpha": 4, "default": 1}
    (offline,) = report.providers
    assert offline.name == "offline" and offline.images == 5 and offline.disk_bytes == image_bytes
    assert report.total.bytes_per_day == pytest.approx((image_bytes + sum(thumbs.values())) / 7)
    assert "Alpha" in run_cli("du").out and json.loads(run_cli("du", "--json").out)["total"]["images"] == 5


def test_a_whole_projects_images_export_in_one_zip(settings: Settings, tmp_path: Path) -> None:
    import zipfile

    prompts = write_prompt_set(tmp_path / "p.json", make_prompts(2))
    for _ in range(2):
        assert run_cli("run", prompts, "--iterations", "1", "--project", "2027").code == 0
    assert run_cli("run", prompts, "--iterations", "1").code == 0  # another project's run stays out
    assert (settings.runs_dir / "p-2027" / "1").is_dir()  # a name of digits never takes a run folder's name
    result = run_cli("export", "--project", "2027", "--out", tmp_path / "all.zip")
    assert result.code == 0, result.err
    with zipfile.ZipFile(tmp_path / "all.zip") as zf:
        assert sorted(n.split("/")[0] for n in zf.namelist() if n.endswith(".jpg")) == ["run_1", "run_1", "run_2", "run_2"]
    assert run_cli("export", "--project", "nope", "--out", tmp_path / "x.zip").code == 2
    assert run_cli("projects", "add", "2027").code == 2  # the name is taken
    du = json.loads(run_cli("du", "--project", "2027", "--json").out)
    assert [r["name"] for r in du["runs"]] == ["run 1 · p", "run 2 · p"] and du["total"]["images"] == 4
