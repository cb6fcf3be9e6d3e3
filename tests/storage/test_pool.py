"""The pool ledger: models with their parents and kinship, rounds, kinship values."""

from __future__ import annotations

import sqlite3

from llm_evo.storage.pool import FILENAME, ModelRecord, PoolLedger, RoundRecord


def fill(ledger: PoolLedger) -> int:
    run = ledger.create_run('{"pool": {"kinship_metric": "pcc"}}', "abc", {"mergekit": "0.1.5"})
    ledger.add_model(run, ModelRecord("ft_a", 0, "input", "/m/ft_a"))
    ledger.add_model(run, ModelRecord("ft_b", 0, "input", "/m/ft_b"))
    ledger.add_model(run, ModelRecord("g1-00", 1, "merge", "/s/g1-00", parent_a="ft_a",
                                      parent_b="ft_b", parent_kinship=0.25,
                                      merge_config="merge_method: slerp\n"))
    for order, (name, score) in enumerate([("ft_a", 1.0), ("ft_b", 0.5), ("g1-00", 1.5)], 1):
        ledger.set_result(run, name, status="ok", score=score, results={"t/acc": score},
                          error=None, eval_order=order, t_eval=0.1)
    ledger.add_round(run, RoundRecord(1, ["g1-00", "ft_a"], "g1-00", 1.5, 0.6, 3, True))
    ledger.add_kinship(run, [("ft_a", "ft_b", "pcc", 0.25), ("ft_a", "g1-00", "pcc", None)])
    return run


def test_round_trip(tmp_path):
    ledger = PoolLedger(tmp_path)
    run = fill(ledger)
    models = {m.name: m for m in ledger.models(run)}
    child = models["g1-00"]
    assert (child.parent_a, child.parent_b, child.parent_kinship) == ("ft_a", "ft_b", 0.25)
    assert child.status == "ok" and child.score == 1.5 and child.results == {"t/acc": 1.5}
    assert models["ft_a"].origin == "input" and models["ft_a"].eval_order == 1
    ledger.mark_deleted(run, "g1-00", 2)
    assert {m.name: m for m in ledger.models(run)}["g1-00"].deleted_round == 2
    assert ledger.rounds(run)[0].top_k == ["g1-00", "ft_a"]
    assert ledger.kinship(run) == {("ft_a", "ft_b"): 0.25, ("ft_a", "g1-00"): None}
    ledger.finish_run(run, "finished", "converged")
    assert ledger.run()["stop_reason"] == "converged" and ledger.run(run)["id"] == run
    assert ledger.run(99) is None
    ledger.close()
    # plain SQLite underneath, readable by any tool
    con = sqlite3.connect(tmp_path / FILENAME)
    assert con.execute("SELECT COUNT(*) FROM pool_models").fetchone() == (3,)
    assert PoolLedger.exists_in(tmp_path)
