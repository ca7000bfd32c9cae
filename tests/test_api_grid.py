"""Grid mode over the REST API: the same option as ``run --grid`` and New run's toggle."""

from __future__ import annotations

import io
import json
import zipfile

from tests.apiserver import client, serving
from tests.conftest import make_prompts
from tests.test_api import is_problem, wait_for


def test_a_run_started_with_grid_true_splits_each_grid_into_four_cells(settings, engine) -> None:
    with serving(settings, engine) as base, client(base, engine, "ops", "operator") as ops:
        r = ops.post("/v1/runs", json={"prompt_set": {"prompts": make_prompts(2)}, "iterations": 1, "grid": True})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
        assert wait_for(ops, run_id, "completed", "partial", "failed")["status"] == "completed"

        z = ops.get(f"/v1/runs/{run_id}/export.zip", params={"selection": "all"})
        assert z.status_code == 200, z.text
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        images = json.loads(zf.read("manifest.json"))["images"]
    grids = [i for i in images if i["operation"] != "grid-cell"]
    cells = [i for i in images if i["operation"] == "grid-cell"]
    # The offline provider draws real 2x2 grids: each is kept as the parent of its four cells.
    assert len(grids) == 2 and len(cells) == 8
    for grid in grids:
        mine = [c for c in cells if c["parent_ids"] == [grid["image_id"]]]
        assert sorted(c["cell_index"] for c in mine) == [1, 2, 3, 4]


def test_grid_must_be_a_boolean(settings, engine) -> None:
    with serving(settings, engine, runner=False) as base, client(base, engine, "ops", "operator") as ops:
        r = ops.post("/v1/runs", json={"prompt_set": {"prompts": make_prompts(1)}, "grid": "sometimes"})
        problem = is_problem(r, 422)
    assert "grid" in json.dumps(problem)
