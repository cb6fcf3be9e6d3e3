"""Ledgers written before the storage package existed still list, report and resume.

tests/fixtures/ledgers holds a run ledger and a pool ledger written by llm-evo at commit
fda2d0d (`llm_evo/storage.py` and `llm_evo/pool/lineage.py`): a real `llm-evo run` and a
real `llm-evo pool` on the tiny family, each `kill -9`ed mid-way, so each holds an
unfinished run that the same command finishes. Their configs name the models relative to
the folder the command runs in, so each test runs in a folder whose `models/tiny` is the
tiny family, and the stored config is the one given again on resume.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from llm_evo.storage import PoolLedger, RunStorage
from tests.cli.helpers import cli
from tests.e2e_helpers import family_dir

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ledgers"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def workdir(tmp_path: Path, tiny_family: dict) -> Path:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(family_dir(tiny_family), target_is_directory=True)
    return tmp_path


def copy_fixture(kind: str, ledger: type, workdir: Path) -> tuple[Path, Path]:
    """(config, storage folder) in `workdir`, the committed ledger copied, never touched."""
    storage = workdir / kind
    storage.mkdir()
    shutil.copyfile(FIXTURES / kind / ledger.FILENAME, storage / ledger.FILENAME)
    config = workdir / f"{kind}.yml"
    shutil.copyfile(FIXTURES / kind / "config.yml", config)
    return config, storage


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def listed(storage: Path, workdir: Path) -> tuple[list[str], list[dict]]:
    """`llm-evo runs` as a table (its lines) and as JSON."""
    table = cli("llm-evo", "runs", str(storage), cwd=workdir)
    assert table.returncode == 0, table.stderr
    as_json = cli("llm-evo", "runs", str(storage), "--json", cwd=workdir)
    assert as_json.returncode == 0, as_json.stderr
    return table.stdout.splitlines(), json.loads(as_json.stdout)


def reported(storage: Path, workdir: Path, plots: list[str]) -> str:
    """`llm-evo report`: every plot is a PNG; returns summary.md."""
    proc = cli("llm-evo", "report", str(storage), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert f"run 1: report in {storage / 'report'}" in proc.stdout
    for name in plots:
        assert (storage / "report" / f"{name}.png").read_bytes()[:8] == PNG_MAGIC, name
    return (storage / "report" / "summary.md").read_text()


def test_fixtures_are_small_old_ledgers() -> None:
    for kind, ledger, table in (("run", RunStorage, "runs"), ("pool", PoolLedger, "pool_runs")):
        db = FIXTURES / kind / ledger.FILENAME
        assert db.stat().st_size < 100_000, db
        assert query(db, f"SELECT id, status FROM {table}") == [(1, "running")]
        assert json.loads(query(db, f"SELECT versions_json FROM {table}")[0][0])["llm-evo"]


def test_old_run_ledger_lists_and_reports(workdir: Path) -> None:
    _, storage = copy_fixture("run", RunStorage, workdir)
    (header, row), as_json = listed(storage, workdir)
    assert header.split() == ["id", "created", "status", "evals", "best", "last", "gen"]
    assert row.split()[0] == "1" and row.split()[3:] == ["running", "5", "1.1000", "1"]
    assert [(r["id"], r["status"], r["evaluations"], r["best_score"], r["last_generation"])
            for r in as_json] == [(1, "running", 5, 1.1, 0)]
    summary = reported(storage, workdir, ["scores", "genome", "kinship", "times"])
    assert summary.startswith("# llm-evo report: run 1") and "1.1000" in summary


def test_old_pool_ledger_lists_and_reports(workdir: Path) -> None:
    _, storage = copy_fixture("pool", PoolLedger, workdir)
    (header, row), as_json = listed(storage, workdir)
    assert header.split() == ["id", "created", "status", "evals", "best", "rounds", "stopped"]
    assert row.split()[0] == "1" and row.split()[3:] == ["running", "2", "1.2000", "0", "-"]
    assert [(r["id"], r["status"], r["evaluations"], r["best_score"], r["rounds"])
            for r in as_json] == [(1, "running", 2, 1.2, 0)]
    summary = reported(storage, workdir, ["family_tree", "rounds"])
    assert "## Lineage" in summary and "ft_arith" in summary and "ft_category" in summary


@pytest.mark.slow
def test_old_run_ledger_resumes_to_the_end(workdir: Path, ray_head) -> None:
    config, storage = copy_fixture("run", RunStorage, workdir)
    db = storage / RunStorage.FILENAME
    slots = "SELECT generation, idx, kind, genotype_json, score, status, created FROM candidates"
    before = query(db, slots)
    assert len(before) == 5  # three parents and generation 1 of 3, then the kill
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--no-save-final-model", "--quiet", cwd=workdir,
               env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming run 1" in proc.stderr
    assert query(db, "SELECT id, status FROM runs") == [(1, "finished")]
    after = query(db, slots)
    assert set(before) <= set(after)  # recorded before the kill: kept, not redone
    assert sorted((g, i) for g, i, kind, *_ in after if kind == "candidate") == [
        (g, i) for g in range(3) for i in range(2)]
    (_, row), _ = listed(storage, workdir)
    assert row.split()[3] == "finished" and row.split()[4] == "9" and row.split()[-1] == "3"


@pytest.mark.slow
def test_old_pool_ledger_resumes_to_the_end(workdir: Path, ray_head) -> None:
    config, storage = copy_fixture("pool", PoolLedger, workdir)
    db = storage / PoolLedger.FILENAME
    scored = ("SELECT name, round, origin, score, status, eval_order, created FROM pool_models "
              "WHERE eval_order IS NOT NULL")
    before = query(db, scored)
    assert sorted(r[0] for r in before) == ["ft_arith", "ft_category"]  # the inputs, then kill
    proc = cli("llm-evo", "pool", str(config), "--storage-path", str(storage),
               "--quiet", cwd=workdir, env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming pool run 1 (running)" in proc.stderr
    assert query(db, "SELECT id, status FROM pool_runs") == [(1, "finished")]
    after = query(db, scored)
    assert set(before) <= set(after)  # scored before the kill: kept, not scored again
    assert sorted(r[5] for r in after) == list(range(1, len(after) + 1))
    assert any(r[2] == "merge" and r[4] == "ok" for r in after)
    _, as_json = listed(storage, workdir)
    assert as_json[0]["status"] == "finished" and as_json[0]["rounds"] >= 1
    assert as_json[0]["evaluations"] == len(after)
