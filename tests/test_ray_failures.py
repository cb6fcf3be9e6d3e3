"""What a run does when its Ray cluster goes wrong, for real: a `ray start` head that died
and left its record behind, and a run's own cluster losing its raylet and every worker.

Every process killed here is one this test started (found by its temp dir, or under the
run's driver): nothing else on the machine is touched.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli.helpers import BIN, cli
from tests.e2e_helpers import candidate_rows, write_config

pytestmark = pytest.mark.slow

GENERATIONS, POPULATION = 2, 4


def _rows(storage: Path) -> dict[tuple[int, int], tuple]:
    return candidate_rows(storage, "status, error, created")


def _run_status(storage: Path) -> str:
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    try:
        return db.execute("SELECT status FROM runs ORDER BY id DESC").fetchone()[0]
    finally:
        db.close()


@pytest.fixture()
def config(tmp_path, tiny_family):
    return write_config(tmp_path, tiny_family, population=POPULATION, generations=GENERATIONS,
                        limit=20, extra={"search": {"evaluate_parents": False}})


def test_a_dead_heads_record_does_not_stop_a_run(tmp_path, config):
    from tests.ray_helpers import start_head, stop_head

    head = start_head(num_cpus=1)
    try:
        stop_head(head.root, remove=False)  # SIGKILL: no `ray stop`, the record stays
        assert head.record.read_text().strip() == head.address
        proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "s"),
                   "--num-workers", "2", "--quiet", env=head.env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        notice = [line for line in proc.stderr.splitlines() if "does not answer" in line]
        assert len(notice) == 1 and head.address in notice[0]
        assert "private local cluster" in notice[0] and str(head.record) in notice[0]
        got = _rows(tmp_path / "s")
        assert len(got) == GENERATIONS * POPULATION
        assert all(status == "ok" for status, _, _ in got.values())
        assert head.record.is_file()  # the user's file: reported, not deleted
    finally:
        stop_head(head.root)  # also anything of the run's own cluster left under it


def test_losing_the_raylet_and_every_worker_is_one_line_and_resumes(tmp_path, config):
    from tests.ray_helpers import kill, run_cluster_processes

    storage = tmp_path / "s"
    args = [str(BIN / "llm-evo"), "run", str(config), "--storage-path", str(storage),
            "--num-workers", "2", "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no evaluation was recorded in time"
        found = run_cluster_processes(proc.pid)
        if len(_rows(storage)) >= 2 and found["raylet"] and len(found["workers"]) == 2:
            break
        time.sleep(0.2)
    kill(found["raylet"] + found["workers"])
    before = _rows(storage)
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 3, err[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and ours[0] == err.strip().splitlines()[-1]
    assert "died" in ours[0] and "run the same command again to resume" in ours[0]
    kept = _rows(storage)
    # everything finished is recorded; a job cut short by the loss is not recorded as failed
    assert set(before) <= set(kept) and len(kept) < GENERATIONS * POPULATION
    assert all(status == "ok" for status, _, _ in kept.values()), kept
    assert _run_status(storage) == "interrupted"

    again = cli(*["llm-evo", *args[1:]])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming run 1" in again.stderr
    done = _rows(storage)
    assert sorted(done) == [(g, i) for g in range(GENERATIONS) for i in range(POPULATION)]
    assert all(done[key] == row for key, row in kept.items())  # reused, never redone
    assert _run_status(storage) == "finished"
