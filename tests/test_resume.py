"""Crash safety, for real: the driver is `kill -9`ed mid-generation three times and resumed
each time; a Ray worker process is killed mid-run. Nothing finished is lost or redone."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.helpers import BIN, cli
from tests.e2e_helpers import write_config

pytestmark = pytest.mark.slow

GENERATIONS, POPULATION = 3, 4


def rows(storage: Path) -> dict[tuple[int, int], tuple]:
    if not (storage / "llm_evo.sqlite").is_file():
        return {}
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    try:
        got = db.execute("SELECT generation, idx, genotype_json, score, status, created "
                         "FROM candidates WHERE kind='candidate'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {(g, i): (geno, score, status, created) for g, i, geno, score, status, created in got}


def start(config: Path, storage: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "llm-evo"), "run", str(config), "--storage-path", str(storage),
         "--num-workers", "2", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def kill_after(proc: subprocess.Popen, storage: Path, n_rows: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while len(rows(storage)) < n_rows:
        if proc.poll() is not None:
            raise AssertionError(f"run ended before the kill point: {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("kill point not reached")
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only, as a crash or OOM kill would
    proc.wait()


@pytest.fixture()
def config(tmp_path, tiny_family):
    return write_config(tmp_path, tiny_family, population=POPULATION, generations=GENERATIONS,
                        limit=20, extra={"search": {"evaluate_parents": False}})


def test_kill_9_three_times_then_resume_equals_uninterrupted(tmp_path, config):
    reference = tmp_path / "reference"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(reference),
               "--num-workers", "2", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = rows(reference)
    assert len(expected) == GENERATIONS * POPULATION

    storage = tmp_path / "crashy"
    seen: dict[tuple[int, int], float] = {}
    for kill_point in (1, 6, 10):  # mid gen 1, mid gen 2, mid gen 3
        kill_after(start(config, storage), storage, kill_point)
        now = rows(storage)
        for slot, created in seen.items():
            assert now[slot][3] == created, f"{slot} was evaluated again"
        seen = {slot: r[3] for slot, r in now.items()}
    final = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
                "--num-workers", "2", "--quiet")
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resuming run 1" in final.stderr

    got = rows(storage)
    assert sorted(got) == sorted(expected)  # no gaps, no extra slots
    for slot, created in seen.items():
        assert got[slot][3] == created, f"{slot} was evaluated again after the last kill"
    for slot, (geno, score, status, _) in expected.items():
        assert got[slot][0] == geno, slot  # same genotypes as the uninterrupted run
        assert got[slot][2] == status
        assert got[slot][1] == pytest.approx(score, abs=1e-9)
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    assert db.execute("SELECT COUNT(*), MAX(status) FROM runs").fetchone() == (1, "finished")
    assert (storage / "best_config.yaml").read_text() == (
        reference / "best_config.yaml").read_text()


def test_changed_config_is_refused_with_a_diff(tmp_path, config):
    storage = tmp_path / "s"
    storage.mkdir()
    from llm_evo.config import load_config
    from llm_evo.storage import RunStorage

    cfg = load_config(config)
    RunStorage(storage).create_run(cfg.canonical_json(), "0123456789abcdef", 7, {})
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--max-generation", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "search.max_generations: 3 -> 5" in proc.stderr and "--force-new-run" in proc.stderr


def _worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::EvalWorker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_killed_ray_worker_is_replaced_and_the_run_completes(tmp_path, config):
    storage = tmp_path / "s"
    proc = start(config, storage)
    deadline = time.monotonic() + 300
    while len(rows(storage)) < 2 or not _worker_pids():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    os.kill(_worker_pids()[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    got = rows(storage)
    assert sorted(got) == [(g, i) for g in range(GENERATIONS) for i in range(POPULATION)]
    assert all(r[2] in ("ok", "failed") for r in got.values())
    assert sum(r[2] == "ok" for r in got.values()) >= len(got) - 1


def test_sigint_stops_cleanly_without_a_final_merge(tmp_path, config):
    storage = tmp_path / "s"
    proc = subprocess.Popen(
        [str(BIN / "llm-evo"), "run", str(config), "--storage-path", str(storage),
         "--num-workers", "2", "--quiet", "--save-final-model"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(rows(storage)) < 2:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "resume" in err
    kept = rows(storage)
    assert len(kept) >= 2 and all(r[2] in ("ok", "failed") for r in kept.values())
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    assert db.execute("SELECT status FROM runs").fetchone() == ("interrupted",)
    assert not (storage / "final_model").exists()
