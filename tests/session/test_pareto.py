"""The hook that keeps a Pareto run's front: the ledger's `pareto` table and `pareto/`."""

from __future__ import annotations

import json

import yaml

from llm_evo.config import parse_config
from llm_evo.session.pareto import ParetoHook
from llm_evo.storage import CandidateRecord, RunStorage


def config(weights=(1.0, 1.0)):
    return parse_config({
        "genome": {"models": ["a", "b"], "merge_method": "linear"},
        "tasks": [{"name": "t", "weight": weights[0]}, {"name": "u", "weight": weights[1]}],
        "search": {"strategy": "nsga2", "objective": "pareto"}})


def rec(gen, idx, t, u, kind="candidate", status="ok"):
    return CandidateRecord(gen, idx, kind, None, [t, u], f"merge_method: linear # {gen}/{idx}\n",
                           {"t/acc,none": t, "u/acc,none": u}, t + u, status, None)


def test_hook_keeps_the_front_in_the_ledger_and_the_folder(tmp_path):
    storage = RunStorage(tmp_path)
    run = storage.create_run("{}", "h", 0, {})
    hook = ParetoHook(config(), storage, tmp_path)
    storage.record(run, rec(-1, 0, 0.9, 0.9, kind="parent"))  # never on the front
    for r in [rec(0, 0, 0.2, 0.8), rec(0, 1, 0.5, 0.5), rec(0, 2, 0.1, 0.1),
              rec(0, 3, 0.9, 0.0, status="failed")]:
        storage.record(run, r)
    hook.after_generation(run, 0, None)
    assert [(c.generation, c.idx) for c in storage.front(run)] == [(0, 0), (0, 1)]
    assert sorted(p.name for p in (tmp_path / "pareto").iterdir()) == [
        "front.json", "g000_c000.yaml", "g000_c001.yaml"]
    assert yaml.safe_load((tmp_path / "pareto/g000_c001.yaml").read_text()) == {
        "merge_method": "linear"}

    # generation 1 dominates (0, 1): it leaves the ledger's front and the folder
    storage.record(run, rec(1, 0, 0.6, 0.6))
    hook.after_generation(run, 1, None)
    assert [(c.generation, c.idx) for c in storage.front(run)] == [(0, 0), (1, 0)]
    front = json.loads((tmp_path / "pareto/front.json").read_text())
    assert front["objectives"] == ["t/acc,none", "u/acc,none"]
    assert [(m["generation"], m["idx"]) for m in front["front"]] == [(0, 0), (1, 0)]
    assert not (tmp_path / "pareto/g000_c001.yaml").exists()
    since = dict(((g, i), s) for g, i, s in storage.conn.execute(
        "SELECT generation, idx, since FROM pareto"))
    assert since == {(0, 0): 0, (1, 0): 1}
    assert hook.summary(storage.candidates(run))["size"] == 2
