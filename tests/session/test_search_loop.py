"""The generation loop in-process on a local Ray cluster: invalid genotypes and failed
merges are recorded with their errors, the strategy is told, and the run finishes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llm_evo.config import load_config
from llm_evo.resolve import build_genome
from llm_evo.session.options import RunOptions
from llm_evo.session.search_loop import SearchLoop
from llm_evo.storage import RunStorage
from llm_evo.strategies import STRATEGIES
from llm_evo.strategies.base import Strategy
from tests.e2e_helpers import write_config

pytestmark = pytest.mark.slow


class ScriptedStrategy(Strategy):
    """Proposes a fixed list of genotypes per generation and remembers what it was told."""

    name = "scripted"
    script: list[list[np.ndarray]] = []
    told: list[list[float | None]] = []

    def ask(self) -> list[np.ndarray]:
        return [np.array(x) for x in self.script[self.generation]]

    def tell(self, genotypes, scores) -> None:
        type(self).told.append(list(scores))
        self.emit("told", n=len(scores))
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]


@pytest.fixture(autouse=True)
def scripted_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered for these tests only: registered at import, it would join the strategy
    contract suite, which is parametrised over the registry when pytest collects it."""
    monkeypatch.setitem(STRATEGIES, "scripted", f"{__name__}:ScriptedStrategy")


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_invalid_genotype_recorded_and_run_finishes(tmp_path, tiny_family, ray_cluster):
    path = write_config(tmp_path, tiny_family, method="linear", strategy="scripted",
                        population=3, generations=2, limit=20,
                        extra={"genome": {"normalize": True, "allow_negative_weights": True},
                               "search": {"evaluate_parents": False}})
    config = load_config(path)
    genome = build_genome(config)
    good = genome.space.initial
    zero_sum = np.tile([0.5, -0.5], genome.n_genes // 2)  # normalised weights sum to 0
    ScriptedStrategy.script = [[good, zero_sum, good * 0.5], [zero_sum, good, good]]
    ScriptedStrategy.told = []
    summary = SearchLoop(config, genome, RunOptions(storage_path=str(tmp_path / "s"),
                                                    num_workers=2, quiet=True),
                         echo=lambda m: None).run()
    store = RunStorage(tmp_path / "s")
    cands = store.candidates(summary.run_id)
    failed = [(c.generation, c.idx) for c in cands if c.status == "failed"]
    assert failed == [(0, 1), (1, 0)]
    assert all("about zero" in c.error for c in cands if c.status == "failed")
    assert summary.failed == 2 and summary.evaluations == 6
    assert ScriptedStrategy.told[0][1] is None and ScriptedStrategy.told[0][0] is not None
    assert [e["kind"] for e in store.events(summary.run_id)] == ["told", "told"]
    assert store.latest_checkpoint(summary.run_id) == (1, "told", {"generation": 2})
    assert store.runs()[0]["status"] == "finished"


def test_workers_survive_a_failing_merge(tmp_path, tiny_family, ray_cluster):
    from llm_evo.evaluation.jobs import Job, TaskSpec, WorkerSpec
    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet
    from tests.e2e_helpers import TASKS, family_dir

    root = family_dir(tiny_family)
    spec = WorkerSpec(tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in TASKS),
                      task_search_paths=(str(root / "tasks"),), merge_dir=str(tmp_path),
                      limit=10)
    workers = WorkerSet(spec, WorkerOptions(num_workers=2))
    workers.start()
    try:
        bad = {"merge_method": "linear", "models": [
            {"model": str(tmp_path / "missing_a"), "parameters": {"weight": 1.0}},
            {"model": str(tmp_path / "missing_b"), "parameters": {"weight": 1.0}}]}
        jobs = [Job(0, 0, model_path=str(root / "base")), Job(0, 1, merge_config=bad),
                Job(0, 2, model_path=str(root / "ft_arith"))]
        got = {}
        workers.run(jobs, lambda r: got.__setitem__(r.idx, r))
        assert sorted(got) == [0, 1, 2]
        assert got[0].status == got[2].status == "ok"
        assert got[1].status == "failed" and got[1].error
        assert {r.worker for r in got.values()} <= {"w0", "w1"}
    finally:
        workers.shutdown()


def test_a_tie_for_best_goes_to_the_earlier_slot_whatever_finishes_first(tmp_path, tiny_family):
    """Workers finish in any order; best_config.yaml must not depend on it (a resumed run
    and an uninterrupted one wrote different files on a tie before this rule)."""
    from llm_evo.storage import CandidateRecord

    config = load_config(write_config(tmp_path, tiny_family, limit=20))
    genome = build_genome(config)

    def rec(gen: int, idx: int, score: float) -> CandidateRecord:
        return CandidateRecord(gen, idx, "candidate", None, [0.0], f"# slot {gen}/{idx}\n",
                               None, score, "ok", None, raw_score=score)

    for order in ([(1, 2), (1, 0), (0, 5)], [(0, 5), (1, 2), (1, 0)]):
        root = tmp_path / f"s{order[0][0]}"
        loop = SearchLoop(config, genome, RunOptions(storage_path=str(root), quiet=True),
                          echo=lambda m: None)
        for gen, idx in order:
            loop._maybe_new_best(rec(gen, idx, 1.5))
        assert (root / "best_config.yaml").read_text() == "# slot 0/5\n"
        loop._maybe_new_best(rec(2, 0, 1.6))  # a higher score still wins, later or not
        assert (root / "best_config.yaml").read_text() == "# slot 2/0\n"
