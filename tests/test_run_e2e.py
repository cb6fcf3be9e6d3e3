"""End to end through the real parts: `llm-evo run` on a local Ray cluster, mergekit merges
on disk, lm-eval's HF backend on CPU, the SQLite ledger, and mergekit-yaml on the result."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest
import yaml

from tests.cli.helpers import BIN, cli
from tests.e2e_helpers import write_config

pytestmark = pytest.mark.slow


def test_cli_run_records_everything_and_best_config_merges(tmp_path, tiny_family):
    config = write_config(tmp_path, tiny_family, population=4, generations=2)
    storage = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--num-workers", "2", "--save-final-model", "--wandb", "--wandb-project", "e2e",
               env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the summary: parents' scores next to the best merge, then its config
    assert "parent ft_arith" in proc.stdout and "parent base" in proc.stdout
    assert "best merge" in proc.stdout and "merge_method: task_arithmetic" in proc.stdout
    # one progress line per generation (not a TTY), with best and timing
    gen_lines = [line for line in proc.stderr.splitlines() if line.startswith("gen ")]
    assert len(gen_lines) == 2 and all("4/4" in line for line in gen_lines)

    db = sqlite3.connect(storage / "llm_evo.sqlite")
    run = db.execute("SELECT config_hash, seed, versions_json, status FROM runs").fetchall()
    assert len(run) == 1 and run[0][1] == 7 and run[0][3] == "finished"
    assert "mergekit" in run[0][2] and "lm-eval" in run[0][2]
    rows = db.execute("SELECT generation, idx, status, score, results_json, t_total, "
                      "merge_config FROM candidates WHERE kind='candidate' "
                      "ORDER BY generation, idx").fetchall()
    assert [(g, i) for g, i, *_ in rows] == [(g, i) for g in range(2) for i in range(4)]
    ok = [r for r in rows if r[2] == "ok"]
    assert ok and all(0 <= r[3] <= 2 and r[5] > 0 and "tiny_skill_arith" in r[4] for r in ok)
    parents = db.execute("SELECT label, status, score FROM candidates WHERE kind='parent'")
    assert {p[0] for p in parents} == {"ft_arith", "ft_category", "base"}

    best_score = max(r[3] for r in ok)
    best_yaml = (storage / "best_config.yaml").read_text()
    assert best_yaml == next(r[6] for r in ok if r[3] == best_score)
    assert not list((storage / "merges").iterdir())  # merged dirs are deleted after scoring
    assert (storage / "final_model" / "config.json").is_file()

    # W&B (offline) got a run, and the ledger remembers its id for a resume
    assert list((storage / "wandb").glob("offline-run-*/run-*.wandb"))
    assert db.execute("SELECT COUNT(*) FROM events WHERE kind='wandb_run'").fetchone() == (1,)

    out = tmp_path / "merged"
    merge = subprocess.run([str(BIN / "mergekit-yaml"), str(storage / "best_config.yaml"),
                            str(out)], capture_output=True, text=True, timeout=300)
    assert merge.returncode == 0, merge.stderr[-2000:]
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))


def test_joins_a_ray_head_started_with_ray_start(tmp_path, tiny_family, ray_head):
    """Without --ray-address, the live head `ray start` recorded is joined, as `ray.init()`
    would; RAY_ADDRESS is honoured too; the head outlives both runs. The head is the
    session's (conftest's ray_head, a plain `ray start --head`): other tests' workers are
    in its logs too, so this counts the ones its own runs add."""
    from llm_evo.evaluation.cluster import gcs_answers

    head = ray_head
    config = write_config(tmp_path, tiny_family, population=3, generations=1, limit=20,
                          extra={"search": {"evaluate_parents": False}})
    before = len(head.worker_logs("EvalWorker"))
    # 1. no address: the head recorded in Ray's temp dir (RAY_TMPDIR) is found and joined
    workers = min(4, head.cpus)  # the default: one per core the head offers
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "auto"),
               env=head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"joining the cluster at {head.address}" in proc.stderr
    db = sqlite3.connect(tmp_path / "auto" / "llm_evo.sqlite")
    assert [r[0] for r in db.execute("SELECT status FROM candidates")] == ["ok"] * 3
    # its workers ran on the head's node: their logs are in the head's session
    assert len(head.worker_logs("EvalWorker")) == before + workers
    # 2. RAY_ADDRESS, from a driver whose Ray temp dir holds no record at all
    env = {k: v for k, v in head.env.items() if k != "RAY_TMPDIR"}
    env["RAY_ADDRESS"] = head.address
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "env"),
               env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(head.worker_logs("EvalWorker")) == before + 2 * workers
    # the head is still up after both runs: llm-evo joined it and did not stop it
    assert gcs_answers(head.address) and head.record.read_text().strip() == head.address


def test_mergekit_evolve_example_config_validates_unchanged(repo_root, tiny_family):
    proc = cli("llm-evo", "validate", "configs/mergekit_evolve_example.yml",
               "--task-search-path", "models/tiny/tasks", cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    assert "genes: 2 x 2 x 3 x 2 = 24" in proc.stdout


def test_every_shipped_config_validates(repo_root, tiny_family, smol_family):
    configs = sorted((repo_root / "configs").glob("*.yml"))
    assert len(configs) >= 2
    for path in configs:
        proc = cli("llm-evo", "validate", str(path.relative_to(repo_root)),
                   "--task-search-path", "models/tiny/tasks", cwd=repo_root)
        assert proc.returncode == 0, (path, proc.stderr)
        assert yaml.safe_load(path.read_text())["genome"]["models"]
