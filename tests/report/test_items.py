"""The report's item-by-item comparison of the best merge with each parent (issue #17)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from llm_evo.report.items import agreements
from llm_evo.report.run import write_report
from llm_evo.storage import RunStorage
from tests.report.test_run import _best, build_run, make_config


def test_gained_and_lost_items_against_each_parent() -> None:
    best = {"t/acc,none": {"ids": [0, 1, 2, 3, 5], "values": [1.0, 1.0, 0.0, 0.0, 1.0]}}
    parent_a = {"t/acc,none": {"ids": [0, 1, 2, 3, 4], "values": [1.0, 0.0, 1.0, 0.0, 1.0]}}
    parent_b = {"other/acc,none": {"ids": [0], "values": [1.0]}}  # no item of task t
    (a,) = agreements(best, [("a", parent_a), ("b", parent_b)])
    assert (a.task, a.parent, a.items) == ("t/acc,none", "a", 4)  # items 0-3 in common
    assert a.gained == [1] and a.lost == [2] and a.both_right == 1


def test_report_shows_the_items_the_best_merge_gained_and_lost(tmp_path: Path) -> None:
    config = make_config("ties")
    storage, run_id, _ = build_run(tmp_path / "run", config, generations=2, kinship=False)
    best = _best(storage, run_id)
    key = f"{config.tasks[0].name}/{config.tasks[0].metric}"
    right = {"ids": list(range(20)), "values": [1.0] * 15 + [0.0] * 5}
    storage.record(run_id, replace(best, items={key: right}))
    parent = storage.candidates(run_id, kind="parent")[0]
    storage.record(run_id, replace(parent, items={key: {
        "ids": list(range(20)), "values": [0.0] * 3 + [1.0] * 17}}))
    storage.close()
    summary = write_report(tmp_path / "run").summary.read_text()
    assert "## Item by item: the best merge against each parent" in summary
    row = f"| {key} | {parent.label} | 20 | 12 | 3 | 5 | 0, 1, 2 | 15, 16, 17, 18, 19 |"
    assert row in summary


def test_a_ledger_without_items_has_no_item_section(tmp_path: Path) -> None:
    storage, _, _ = build_run(tmp_path / "run", make_config("ties"), generations=1)
    storage.close()
    summary = write_report(tmp_path / "run").summary.read_text()
    assert "Item by item" not in summary
    assert RunStorage(tmp_path / "run").items(1) == {}
