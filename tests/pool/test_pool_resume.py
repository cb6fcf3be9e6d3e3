"""A pool run survives a crash: the driver is `kill -9`ed mid-round, and the same command
resumes it from the ledger to the result of an uninterrupted run, scoring nothing twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from llm_evo.config import load_pool_config
from llm_evo.storage import PoolLedger
from tests.cli.helpers import BIN, assert_one_line_error, cli
from tests.pool.conftest import write_pool_config

POOL = {"max_rounds": 3, "exploration": False}


def _query(storage: Path, sql: str) -> list[tuple]:
    try:
        db = sqlite3.connect(storage / "llm_evo_pool.sqlite", timeout=30)
    except sqlite3.OperationalError:
        return []
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:  # the run has not made its tables yet
        return []
    finally:
        db.close()


def _scored(storage: Path) -> dict[str, tuple]:
    rows = _query(storage, "SELECT name, score, status, eval_order, created FROM pool_models "
                           "WHERE eval_order IS NOT NULL")
    return {r[0]: r[1:] for r in rows}


def _outcome(storage: Path) -> tuple[dict, list]:
    """What the search decided: every model with its parents and result, and every round."""
    models = {r[0]: r[1:] for r in _query(
        storage, "SELECT name, round, origin, parent_a, parent_b, status, score, "
                 "deleted_round FROM pool_models")}
    rounds = _query(storage, "SELECT round, top_k_json, best, best_score, evaluations, changed "
                             "FROM pool_rounds ORDER BY round")
    return models, rounds


def _pool(config: Path, storage: Path) -> list[str]:
    return [str(BIN / "llm-evo"), "pool", str(config), "--storage-path", str(storage),
            "--num-workers", "2", "--quiet"]


@pytest.mark.slow
def test_killed_pool_run_resumes_to_the_uninterrupted_result(tmp_path, pool_models):
    config = write_pool_config(tmp_path, pool_models, **POOL)
    reference = tmp_path / "reference"
    done = subprocess.run(_pool(config, reference), capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    storage = tmp_path / "killed"
    proc = subprocess.Popen(_pool(config, storage), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_scored(storage)) < 6:  # the 4 inputs and 2 of round 1's 6 merges
        assert proc.poll() is None, f"ended before the kill point: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "kill point not reached"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash or OOM kill would
    proc.wait()
    before = _scored(storage)
    assert _query(storage, "SELECT status FROM pool_runs") == [("running",)]

    resumed = subprocess.run(_pool(config, storage), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming pool run 1 (running)" in resumed.stderr
    assert _query(storage, "SELECT id, status FROM pool_runs") == [(1, "finished")]

    after = _scored(storage)
    for name, row in before.items():  # scored before the kill: kept, not scored again
        assert after[name] == row, name
    assert sorted(r[2] for r in after.values()) == list(range(1, len(after) + 1))
    assert _outcome(storage) == _outcome(reference)
    on_disk = sorted(p.name for p in (storage / "pool_models" / "run1").iterdir())
    kept = json.loads(_outcome(storage)[1][-1][1])
    assert on_disk == sorted(n for n in kept if n.startswith("g"))


def test_an_unfinished_run_of_another_config_is_not_resumed(tmp_path, pool_models):
    stored = load_pool_config(write_pool_config(tmp_path, pool_models, top_k=2))
    ledger = PoolLedger(tmp_path / "s")
    ledger.create_run(stored.canonical_json(), stored.config_hash(), {})
    ledger.close()
    config = write_pool_config(tmp_path, pool_models, top_k=3)
    assert_one_line_error(
        cli("llm-evo", "pool", str(config), "--storage-path", str(tmp_path / "s")),
        "already holds pool run 1 (running) of a different config", "pool.top_k: 2 -> 3",
        "--force-new-run")


def test_an_upgrade_alone_does_not_block_a_resume(tmp_path, pool_models):
    """A stored config without a field added since (so another hash) still resumes: it is
    read with today's schema, as `llm-evo run` does."""
    from llm_evo.session.options import PoolOptions
    from llm_evo.session.pool_loop import PoolLoop

    config = load_pool_config(write_pool_config(tmp_path, pool_models))
    old = json.loads(config.canonical_json())
    del old["pool"]["dtype"]  # as if written before pool.dtype existed (it is at its default)
    ledger = PoolLedger(tmp_path / "s")
    run_id = ledger.create_run(json.dumps(old), "an-older-hash", {})
    said = []
    runner = PoolLoop(config, PoolOptions(storage_path=str(tmp_path / "s")), echo=said.append)
    assert runner._open_run(ledger) == run_id
    assert said and said[0].startswith("resuming pool run 1 (running)")
    ledger.close()
