"""`llm-evo pool` end to end through the real parts: mergekit merges on disk, lm-eval on a
local Ray cluster, streaming kinship, the lineage ledger, and `llm-evo report` on it."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from tests.cli.helpers import assert_one_line_error, cli
from tests.pool.conftest import write_pool_config
from tests.report.test_pool import png_size


def _snapshot(paths) -> dict:
    return {str(f): f.stat().st_mtime_ns for p in paths for f in Path(p).rglob("*")}


@pytest.mark.slow
def test_pool_runs_to_convergence_records_lineage_and_draws_the_tree(tmp_path, pool_models,
                                                                     ray_head):
    config = write_pool_config(tmp_path, pool_models)
    storage = tmp_path / "pool"
    inputs_before = _snapshot(pool_models["models"])
    proc = cli("llm-evo", "pool", str(config), "--storage-path", str(storage),
               env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pool run 1: stopped (" in proc.stdout and "best " in proc.stdout

    db = sqlite3.connect(storage / "llm_evo_pool.sqlite")
    status, reason = db.execute("SELECT status, stop_reason FROM pool_runs").fetchone()
    assert status == "finished" and reason in ("converged", "no_new_pairs"), reason
    rows = db.execute("SELECT name, round, origin, path, parent_a, parent_b, parent_kinship, "
                      "exploration, status, score, eval_order, deleted_round "
                      "FROM pool_models").fetchall()
    models = {r[0]: r for r in rows}
    inputs = [r for r in rows if r[2] == "input"]
    merges = [r for r in rows if r[2] == "merge"]
    assert len(inputs) == 4 and all(r[8] == "ok" for r in inputs)
    # generation 1 merged every pair of the four inputs; each merge knows its parents
    assert sum(r[1] == 1 for r in merges) == 6
    for r in merges:
        assert r[4] in models and r[5] in models and r[4] != r[5]
        assert -1.0 <= r[6] <= 1.0  # pcc of the parents, measured against the base
    pairs = [frozenset(r[4:6]) for r in merges]
    assert len(pairs) == len(set(pairs))  # no pair is merged twice
    assert any(r[7] for r in merges)  # exploration is on by default and merged something
    # evaluation order is one count over the whole run
    assert sorted(r[10] for r in rows if r[8] == "ok") == list(
        range(1, sum(r[8] == "ok" for r in rows) + 1))

    rounds = db.execute("SELECT round, top_k_json, best_score, top_k_kinship, evaluations, "
                        "changed FROM pool_rounds ORDER BY round").fetchall()
    assert len(rounds) >= 2 and rounds[0][0] == 1
    assert [r[2] for r in rounds] == sorted(r[2] for r in rounds)  # the best never gets worse
    if reason == "converged":
        assert rounds[-1][5] == 0 and rounds[-1][1] == rounds[-2][1]
    top = json.loads(rounds[-1][1])
    assert len(top) == 3 and rounds[-1][3] is not None
    # only the final top-k's merges are left on disk; the inputs were never touched
    for r in merges:
        on_disk = Path(r[3]).is_dir()
        assert on_disk == (r[0] in top), r
        assert (r[11] is None) == (r[0] in top), r
    assert _snapshot(pool_models["models"]) == inputs_before
    assert not (storage / "merges").exists()  # the evaluation scratch folder is gone

    report = cli("llm-evo", "report", str(storage))
    assert report.returncode == 0, report.stderr
    assert "family_tree.png" in report.stdout
    width, height = png_size(storage / "report" / "family_tree.png")
    assert width > 500 and height > 400
    summary = (storage / "report" / "summary.md").read_text()
    assert "## Lineage" in summary and top[0] in summary

    listed = cli("llm-evo", "runs", str(storage), "--json")
    assert listed.returncode == 0, listed.stderr
    (run,) = json.loads(listed.stdout)
    assert run["status"] == "finished" and run["stop_reason"] == reason
    assert run["evaluations"] == sum(r[8] == "ok" for r in rows)
    assert run["best_score"] == max(r[9] for r in rows if r[8] == "ok")


@pytest.mark.slow
def test_without_exploration_and_with_a_budget(tmp_path, pool_models, ray_head):
    config = write_pool_config(tmp_path, pool_models)
    storage = tmp_path / "pool"
    proc = cli("llm-evo", "pool", str(config), "--storage-path", str(storage),
               "--no-exploration", "--max-evaluations", "12", "--quiet",
               env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = sqlite3.connect(storage / "llm_evo_pool.sqlite")
    assert db.execute("SELECT COUNT(*) FROM pool_models WHERE exploration = 1").fetchone() == (0,)
    evaluated = db.execute("SELECT COUNT(*) FROM pool_models WHERE eval_order IS NOT NULL"
                           ).fetchone()[0]
    assert evaluated <= 12
    config_json = db.execute("SELECT config_json FROM pool_runs").fetchone()[0]
    assert json.loads(config_json)["pool"]["exploration"] is False
    # the same storage path is not reused by accident
    again = cli("llm-evo", "pool", str(config), "--storage-path", str(storage))
    assert_one_line_error(again, "already holds pool run 1", "--force-new-run")


def test_bad_input_is_one_line_and_exit_2(tmp_path, pool_models):
    config = write_pool_config(tmp_path, pool_models, top_k=1)
    assert_one_line_error(cli("llm-evo", "pool", str(config), "--storage-path",
                              str(tmp_path / "s")), "pool.top_k")
    missing = dict(pool_models, models=[*pool_models["models"][:3], tmp_path / "nope"])
    config = write_pool_config(tmp_path, missing)
    assert_one_line_error(cli("llm-evo", "pool", str(config), "--storage-path",
                              str(tmp_path / "s")), "pool.models[3]")
    assert_one_line_error(cli("llm-evo", "pool", str(tmp_path / "none.yml"), "--storage-path",
                              str(tmp_path / "s")), "not found")


@pytest.mark.slow
def test_a_failed_merge_is_recorded_and_the_round_goes_on(tmp_path, pool_models, ray_head):
    """A member missing a tensor still loads (transformers fills it in), but every merge
    with it fails on the worker: recorded with the error, not counted, the run finishes."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(pool_models["models"][0], broken)
    weights = load_file(broken / "model.safetensors")
    del weights["model.layers.0.mlp.up_proj.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    models = dict(pool_models, models=[*pool_models["models"][:2], broken])
    config = write_pool_config(tmp_path, models, max_rounds=1, exploration=False)
    storage = tmp_path / "pool"
    proc = cli("llm-evo", "pool", str(config), "--storage-path", str(storage),
               "--quiet", env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = sqlite3.connect(storage / "llm_evo_pool.sqlite")
    rows = db.execute("SELECT name, parent_a, parent_b, status, error, eval_order, t_merge "
                      "FROM pool_models WHERE origin = 'merge'").fetchall()
    assert len(rows) == 3  # every pair of the three inputs
    failed = [r for r in rows if "broken" in (r[1], r[2])]
    assert len(failed) == 2
    for r in failed:
        assert r[3] == "failed" and r[4].startswith("merge failed: ") and r[5] is None, r
        assert not (storage / "pool_models" / "run1" / r[0]).exists()
        assert not (storage / "pool_models" / "run1" / f"{r[0]}.partial").exists()
    (good,) = [r for r in rows if "broken" not in (r[1], r[2])]
    assert good[3] == "ok" and good[5] is not None and good[6] > 0  # merged on a worker
    status, evaluations = db.execute(
        "SELECT p.status, (SELECT COUNT(*) FROM pool_models WHERE eval_order IS NOT NULL) "
        "FROM pool_runs p").fetchone()
    assert status == "finished" and evaluations == 4  # 3 inputs + 1 merge; failures not counted
