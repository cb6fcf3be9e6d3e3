"""The pool report from a ledger alone: family tree PNG, rounds PNG, summary.md."""

from __future__ import annotations

import struct

import pytest

from llm_evo.errors import ConfigError
from llm_evo.report.pool import tree_positions, write_pool_report
from llm_evo.storage import ModelRecord, PoolLedger, RoundRecord, is_pool_storage


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def build(tmp_path) -> None:
    ledger = PoolLedger(tmp_path)
    run = ledger.create_run('{"pool": {"kinship_metric": "pcc", "merge_method": "slerp", '
                            '"t": 0.5, "top_k": 2, "exploration": true}}', "h", {})
    recs = [
        ModelRecord("ft_a", 0, "input", "/m/a", status="ok", score=1.0, eval_order=1),
        ModelRecord("ft_b", 0, "input", "/m/b", status="ok", score=0.8, eval_order=2),
        ModelRecord("ft_c", 0, "input", "/m/c", status="ok", score=0.6, eval_order=3),
        ModelRecord("g1-00", 1, "merge", "/s/g1-00", "ft_a", "ft_b", 0.4, status="ok",
                    score=1.4, eval_order=4),
        ModelRecord("g1-01", 1, "merge", "/s/g1-01", "ft_a", "ft_c", 0.2, status="ok",
                    score=0.9, eval_order=5, deleted_round=1),
        ModelRecord("g2-00x", 2, "merge", "/s/g2-00x", "g1-00", "ft_c", 0.1,
                    exploration=True, status="failed", error="merge failed: boom"),
    ]
    for r in recs:
        ledger.add_model(run, r)
    ledger.add_round(run, RoundRecord(1, ["g1-00", "ft_a"], "g1-00", 1.4, 0.7, 5, True))
    ledger.add_round(run, RoundRecord(2, ["g1-00", "ft_a"], "g1-00", 1.4, 0.7, 5, False))
    ledger.finish_run(run, "finished", "converged")
    ledger.close()


def test_report_draws_the_family_tree_and_writes_the_lineage(tmp_path):
    build(tmp_path)
    assert is_pool_storage(tmp_path)
    report = write_pool_report(tmp_path)
    assert set(report.plots) == {"family_tree", "rounds"}
    width, height = png_size(report.plots["family_tree"])
    assert width > 500 and height > 400
    text = report.summary.read_text()
    assert "stopped: converged" in text and "| g1-00 | 1 | ft_a x ft_b | 0.4000 |" in text
    assert "failed: merge failed: boom" in text and "deleted" in text
    assert "![Family tree" in text


def test_tree_rows_are_rounds_ordered_by_score():
    recs = [ModelRecord("a", 0, "input", "", score=0.5), ModelRecord("b", 0, "input", "",
                                                                     score=0.9),
            ModelRecord("c", 1, "merge", "", score=None)]
    pos = tree_positions(recs)
    assert pos["b"][0] < pos["a"][0] and pos["a"][1] == 0 and pos["c"][1] == -1


def test_no_ledger_is_a_config_error(tmp_path):
    assert not is_pool_storage(tmp_path)
    with pytest.raises(ConfigError, match="no pool ledger"):
        write_pool_report(tmp_path)
    build(tmp_path)
    with pytest.raises(ConfigError, match="no pool run 7"):
        write_pool_report(tmp_path, run_id=7)
