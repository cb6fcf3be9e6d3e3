"""`llm-evo report` and `llm-evo runs` through the installed console script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_evo.storage import CandidateRecord, RunStorage
from tests.cli.helpers import assert_one_line_error, cli
from tests.report.test_run import build_run, make_config, png_size


@pytest.fixture()
def ledger(tmp_path: Path) -> tuple[Path, RunStorage]:
    """Two runs: a finished one with generations, then one interrupted after its parents."""
    config = make_config("ties", filters=["mlp"], kinship_penalty=0.2)
    storage, _, _ = build_run(tmp_path / "run", config, generations=4)
    # The top raw score, heavily penalised for kinship: `runs` must still show it as best.
    storage.record(1, CandidateRecord(3, 8, "candidate", None, None, "merge_method: ties\n",
                                      None, 1.0, "ok", None, raw_score=2.0, kinship=1.0))
    build_run(tmp_path / "run", config, generations=0, status="interrupted")
    return tmp_path / "run", storage


def test_report_default_out_dir(ledger: tuple[Path, RunStorage]) -> None:
    path, storage = ledger
    proc = cli("llm-evo", "report", str(path), "--run-id", "1")
    assert proc.returncode == 0, proc.stderr
    out = path / "report"
    assert f"run 1: report in {out}" in proc.stdout
    for name in ("scores", "genome", "kinship", "times"):
        assert f"{name}.png" in proc.stdout
        width, height = png_size(out / f"{name}.png")
        assert width > 400 and height > 250
    best = storage.best(1)
    assert best is not None and f"{best.raw_score:.4f}" in (out / "summary.md").read_text()


def test_report_latest_run_to_out(ledger: tuple[Path, RunStorage], tmp_path: Path) -> None:
    path, _ = ledger
    proc = cli("llm-evo", "report", str(path), "--out", str(tmp_path / "elsewhere"))
    assert proc.returncode == 0, proc.stderr
    summary = (tmp_path / "elsewhere" / "summary.md").read_text()
    assert summary.startswith("# llm-evo report: run 2")
    assert "**interrupted**" in summary


def test_runs_lists_every_run(ledger: tuple[Path, RunStorage]) -> None:
    path, storage = ledger
    proc = cli("llm-evo", "runs", str(path))
    assert proc.returncode == 0, proc.stderr
    header, first, second = proc.stdout.splitlines()
    assert header.split() == ["id", "created", "status", "evals", "best", "last", "gen"]
    assert first.split()[0] == "1" and first.split()[3:] == [
        "finished", str(4 * 8 + 1 + 4), "2.0000", "4"]
    assert second.split()[0] == "2" and second.split()[3:] == ["interrupted", "4", "-", "-"]

    as_json = json.loads(cli("llm-evo", "runs", str(path), "--json").stdout)
    assert [r["id"] for r in as_json] == [1, 2]
    assert as_json[0]["last_generation"] == 3 and as_json[0]["best_score"] == 2.0
    assert as_json[1]["best_score"] is None


@pytest.mark.parametrize("command", ["report", "runs"])
def test_bad_storage_path_is_one_line(tmp_path: Path, command: str) -> None:
    missing = tmp_path / "no-such-run"
    assert_one_line_error(cli("llm-evo", command, str(missing)), str(missing), "no such")
    assert not missing.exists()
    (tmp_path / "empty").mkdir()
    assert_one_line_error(cli("llm-evo", command, str(tmp_path / "empty")), "llm_evo.sqlite")


def test_report_unknown_run_id(ledger: tuple[Path, RunStorage]) -> None:
    path, _ = ledger
    assert_one_line_error(cli("llm-evo", "report", str(path), "--run-id", "7"),
                          "no run 7", "runs: 1, 2")


def test_runs_on_an_empty_ledger(tmp_path: Path) -> None:
    RunStorage(tmp_path / "run").close()
    proc = cli("llm-evo", "runs", str(tmp_path / "run"))
    assert proc.returncode == 0 and "no runs yet" in proc.stdout
