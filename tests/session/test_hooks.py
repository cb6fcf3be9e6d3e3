"""Kinship-aware search as a hook: best-by-raw-score, the stagnation hook of each strategy,
resuming the stagnation streak, and one real run through the search loop (Ray, mergekit,
lm-eval) with a penalty switched on (the penalty arithmetic: tests/kinship/test_penalty.py)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_evo.config import GenomeConfig, load_config, parse_config
from llm_evo.genome import Genome
from llm_evo.kinship.penalty import build_penalty
from llm_evo.session.hooks import KinshipHook
from llm_evo.storage import CandidateRecord, RunStorage
from llm_evo.strategies import make_strategy
from tests.e2e_helpers import FAMILY, TASKS, family_dir, write_config


def tiny_genome(tiny_family, method: str = "task_arithmetic") -> Genome:
    root = family_dir(tiny_family)
    models = [str(root / m) for m in FAMILY]
    cfg = GenomeConfig(models=models, merge_method=method, base_model=str(root / "base"),
                       layer_granularity=4)
    return Genome(cfg, models, str(root / "base"), 8)


def run_config(tiny_family, **kinship):
    genome = tiny_genome(tiny_family)
    return parse_config({
        "genome": {"models": genome.models, "merge_method": "task_arithmetic",
                   "base_model": genome.base_model, "layer_granularity": 4},
        "tasks": list(TASKS), "kinship": kinship,
    }), genome


def started_hook(config, genome, storage, root) -> KinshipHook:
    """A kinship hook as the search loop has it once the strategy has started (models read)."""
    hook = KinshipHook(config, genome, storage, root)
    hook.prepare()
    return hook


def test_best_is_chosen_by_raw_score(tiny_family, tmp_path):
    config, genome = run_config(tiny_family, penalty=2.0, threshold=0.5)
    storage = RunStorage(tmp_path)
    search = started_hook(config, genome, storage, tmp_path)
    run_id = storage.create_run(config.canonical_json(), config.config_hash(), 0, {})

    def rec(idx: int, score: float) -> CandidateRecord:
        return CandidateRecord(0, idx, "candidate", None, [0.5] * genome.n_genes, "cfg",
                               {}, score, "ok", None)

    inbred = search.on_result(rec(0, 0.8), 0.99)
    outbred = search.on_result(rec(1, 0.7), 0.3)
    assert (inbred.raw_score, inbred.kinship) == (0.8, 0.99)
    assert inbred.score == pytest.approx(0.8 - 2.0 * 0.49)
    assert outbred.score == 0.7  # below the threshold: no penalty
    failed = search.on_result(CandidateRecord(0, 2, "candidate", None, None, None, None, None,
                                           "failed", "boom"), 0.5)
    assert failed.score is None and failed.kinship == 0.5
    for r in (inbred, outbred, failed):
        storage.record(run_id, r)
    assert storage.best(run_id).idx == 0  # raw 0.8 beats raw 0.7, whatever the penalty


class _Diversity:
    """Feeds after_generation a chosen population kinship, as assess would have computed."""

    @staticmethod
    def set(search: KinshipHook, generation: int, mean: float) -> None:
        search._diversity[generation] = {"mean": mean, "min": mean - 0.01, "max": mean,
                                         "metric": "cs", "candidates": 4}


def test_stagnation_calls_each_strategy_hook(tiny_family, tmp_path):
    config, genome = run_config(tiny_family, stagnation=0.95, stagnation_generations=2)
    storage = RunStorage(tmp_path)
    run_id = storage.create_run(config.canonical_json(), config.config_hash(), 0, {})
    search = started_hook(config, genome, storage, tmp_path)
    cma = make_strategy("cma", genome.space, seed=0, population_size=4)
    xs = cma.ask()
    search.before_generation(run_id, 0, xs, cma)
    cma.tell(xs, [float(-np.sum(x**2)) for x in xs])
    sigma = cma.es.sigma
    for gen, mean in enumerate([0.97, 0.90, 0.96]):  # high, low (streak resets), high
        _Diversity.set(search, gen, mean)
        search.after_generation(run_id, gen, cma)
    assert not [e for e in cma.events if e["kind"] in ("stagnation", "cma_restart")]
    _Diversity.set(search, 3, 0.99)  # second high in a row: G = 2 reached
    search.after_generation(run_id, 3, cma)
    kinds = [e["kind"] for e in cma.drain_events()]
    assert "stagnation" in kinds and "cma_restart" in kinds
    assert cma.es.sigma > sigma  # restarted with a larger step
    logged = storage.events(run_id, kind="kinship_diversity")
    assert [e["generation"] for e in logged] == [0, 1, 2, 3]
    assert {"mean", "min"} <= set(logged[0])
    # random search has no step to widen: the default hook records the event
    rnd = make_strategy("random", genome.space, seed=0, population_size=4)
    rnd.on_stagnation("test")
    assert [e["kind"] for e in rnd.drain_events()] == ["stagnation"]
    # a resumed run replays the stored diversity events: gens 2 and 3 were high, but the
    # streak was reset by the trigger at 3; one more high generation does not fire (G = 2)
    resumed = started_hook(config, genome, storage, tmp_path)
    cma2 = make_strategy("cma", genome.space, seed=0, population_size=4)
    resumed.before_generation(run_id, 4, cma2.ask(), cma2)
    resumed._diversity[4] = {"mean": 0.99, "min": 0.98, "max": 0.99, "metric": "cs",
                             "candidates": 4}
    resumed.after_generation(run_id, 4, cma2)
    assert "cma_restart" not in [e["kind"] for e in cma2.drain_events()]


def test_llm_strategy_is_forced_to_sigma_high():
    from tests.llm.fault_server import FaultServer

    cfg = GenomeConfig(models=["a", "b", "c"], merge_method="ties", base_model="base",
                       layer_granularity=4)
    space = Genome(cfg, ["a", "b", "c"], "base", 8).space
    server = FaultServer(api_key="sk-kin", rows=2, cols=6).start()
    try:
        s = make_strategy("llm", space, seed=0, population_size=4, base_url=server.url,
                          model="test-model", api_key="sk-kin", sigma_low=0.01,
                          sigma_high=0.3)
        for step in range(2):  # every generation improves: sigma_low is due
            xs = s.ask()
            s.tell(xs, [float(step + i) for i in range(len(xs))])
        s.on_stagnation("kinship above 0.95 for 3 generation(s)")
        state = s.state_dict()
        s.ask()
        sigmas = [e for e in s.drain_events() if e["kind"] == "sigma"]
        assert sigmas[-1]["sigma"] == 0.3 and sigmas[-1]["reason"] == "kinship stagnation"
        assert state["force_sigma_high"] is True and s.force_sigma_high is False
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_real_run_with_kinship_penalty(tmp_path, tiny_family, ray_cluster):
    from llm_evo.report.summary import summary_text
    from llm_evo.resolve import build_genome
    from llm_evo.session.options import RunOptions
    from llm_evo.session.search_loop import SearchLoop

    kinship = {"penalty": 2.0, "threshold": 0.5, "stagnation": 0.0,
               "stagnation_generations": 1}
    path = write_config(tmp_path, tiny_family, method="task_arithmetic", strategy="cma",
                        population=4, generations=2, limit=20,
                        extra={"kinship": kinship, "search": {"evaluate_parents": False}})
    config = load_config(path)
    genome = build_genome(config)
    storage_path = tmp_path / "s"
    summary = SearchLoop(config, genome, RunOptions(storage_path=str(storage_path),
                                                    num_workers=2, quiet=True),
                         echo=lambda m: None).run()
    store = RunStorage(storage_path)
    cands = store.candidates(summary.run_id, kind="candidate")
    assert len(cands) == 8 and all(c.status == "ok" for c in cands)
    first = [c for c in cands if c.generation == 0]
    second = [c for c in cands if c.generation == 1]
    # generation 0 has no elite yet: no kinship, no penalty
    assert all(c.kinship is None and c.score == c.raw_score for c in first)
    # generation 1: kinship to the top 5 of generation 0, recomputed independently
    penalty, facts = build_penalty(config.kinship, genome, storage_path)
    assert facts["cached"]
    elite = sorted(first, key=lambda c: c.raw_score, reverse=True)[:5]
    expected = penalty.assess([c.genotype for c in second], [c.genotype for c in elite])
    for c, k in zip(second, expected.kinship, strict=True):
        assert c.kinship == pytest.approx(k, abs=1e-9)
        assert c.score == pytest.approx(c.raw_score - 2.0 * max(0.0, c.kinship - 0.5))
    assert any(c.score < c.raw_score for c in second)  # the penalty did bite
    # best_config.yaml is the best raw score, whatever the penalised scores say
    best = max(cands, key=lambda c: c.raw_score)
    assert (storage_path / "best_config.yaml").read_text() == best.merge_config
    assert summary.best.raw_score == best.raw_score
    # diversity logged per generation; stagnation (threshold 0, G = 1) restarted CMA
    diversity = store.events(summary.run_id, kind="kinship_diversity")
    assert [e["generation"] for e in diversity] == [0, 1]
    assert all(e["min"] <= e["mean"] for e in diversity)
    kinds = [e["kind"] for e in store.events(summary.run_id)]
    assert kinds.count("cma_restart") == 2 and "kinship_gram" in kinds
    # the per-candidate kinship cost is under 1% of a candidate's evaluation time
    kin = summary.kinship
    assert kin["per_candidate_s"] > 0 and kin["fraction"] < 0.01, kin
    text = summary_text(summary, config)
    assert "kinship (cs, exact)" in text and "of its evaluation time" in text
