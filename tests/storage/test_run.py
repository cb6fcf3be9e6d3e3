"""The SQLite run ledger: records survive reopening, one row per slot, best by raw score."""

from __future__ import annotations

import sqlite3

from llm_evo.storage import CandidateRecord, RunStorage


def rec(gen, idx, score, status="ok", kind="candidate", raw=None):
    return CandidateRecord(gen, idx, kind, None, [0.1, 0.2], "merge_method: linear\n",
                           {"t/acc,none": score or 0}, score, status,
                           None if status == "ok" else "boom", raw_score=raw)


def test_records_persist_across_connections(tmp_path):
    s = RunStorage(tmp_path)
    run = s.create_run("{}", "abc", 1, {"x": "1"})
    s.record(run, rec(0, 0, 0.5))
    s.record(run, rec(0, 1, None, status="failed"))
    s.close()
    again = RunStorage(tmp_path)
    got = again.candidates(run)
    assert [(c.idx, c.status, c.error) for c in got] == [(0, "ok", None), (1, "failed", "boom")]
    assert got[0].genotype == [0.1, 0.2] and got[0].results == {"t/acc,none": 0.5}


def test_same_slot_is_replaced_not_duplicated(tmp_path):
    s = RunStorage(tmp_path)
    run = s.create_run("{}", "abc", 1, {})
    s.record(run, rec(0, 0, 0.1))
    s.record(run, rec(0, 0, 0.2))
    rows = sqlite3.connect(s.db_path).execute("SELECT COUNT(*) FROM candidates").fetchone()
    assert rows[0] == 1 and s.candidates(run)[0].score == 0.2


def test_best_uses_raw_score_and_skips_parents(tmp_path):
    s = RunStorage(tmp_path)
    run = s.create_run("{}", "abc", 1, {})
    s.record(run, rec(-1, 0, 0.99, kind="parent"))
    s.record(run, rec(0, 0, 0.3, raw=0.9))  # penalised score low, raw score high
    s.record(run, rec(0, 1, 0.5, raw=0.5))
    assert s.best(run).idx == 0


def test_events_and_checkpoints(tmp_path):
    s = RunStorage(tmp_path)
    run = s.create_run("{}", "abc", 1, {})
    s.add_events(run, [{"kind": "sigma", "generation": 2, "sigma": 0.2}])
    assert s.events(run, "sigma") == [{"generation": 2, "kind": "sigma", "sigma": 0.2}]
    s.save_checkpoint(run, 0, {"a": 1})
    s.save_checkpoint(run, 1, {"a": 2}, phase="asked")
    assert s.latest_checkpoint(run) == (1, "asked", {"a": 2})
    s.save_checkpoint(run, 1, {"a": 3})
    assert s.latest_checkpoint(run) == (1, "told", {"a": 3})
    s.set_status(run, "finished")
    assert s.runs()[0]["status"] == "finished"


def test_per_item_results_round_trip_and_follow_their_slot(tmp_path):
    from dataclasses import replace

    s = RunStorage(tmp_path)
    run = s.create_run("{}", "abc", 1, {})
    items = {"a/acc,none": {"ids": [3, 7, 2**40], "values": [1.0, 0.0, 0.25]},
             "b/exact_match,strict": {"ids": [0], "values": [1.0]}}
    s.record(run, replace(rec(0, 0, 0.5), items=items))
    s.record(run, rec(0, 1, 0.4))  # a record without items has none
    s.close()
    again = RunStorage(tmp_path)
    assert again.items(run) == {(0, 0): items}
    assert again.items(run, task="b/exact_match,strict") == {(0, 0): {
        "b/exact_match,strict": items["b/exact_match,strict"]}}
    assert again.items(run, generation=0) == {(0, 0): items}
    assert again.items(run, generation=1) == {}
    # a slot written again (a resumed generation) replaces its items, never adds to them
    again.record(run, replace(rec(0, 0, 0.6), items={"a/acc,none": {"ids": [1], "values": [0.0]}}))
    assert again.items(run) == {(0, 0): {"a/acc,none": {"ids": [1], "values": [0.0]}}}
