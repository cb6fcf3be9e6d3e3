"""Coarse-to-fine GP: optuna's GP in ctf's tied levels, every result carried to finer ones.

The shared contract (seeding, bounds, failures, resume) is test_strategy_contract.py's and
the levels themselves are test_coarse_to_fine.py's; this file checks what only this
strategy promises: a finer level's GP knows every earlier result, exactly as measured."""

from __future__ import annotations

import json

import numpy as np

from llm_evo.strategies import make_strategy
from tests.strategies.test_coarse_to_fine import hard_space


def score(x: np.ndarray) -> float:
    return float(-np.sum((x - 0.8) ** 2))


def drive(s, generations: int, fail_first: bool = False) -> list[np.ndarray]:
    told = []
    for g in range(generations):
        xs = s.ask()
        scores: list[float | None] = [score(x) for x in xs]
        if fail_first and g == 0:
            scores[0] = None
        s.tell(xs, scores)
        told += xs
    return told


def test_a_finer_level_starts_with_every_result_so_far():
    sp = hard_space()
    s = make_strategy("ctf-gp", sp, seed=0, population_size=6, generations_per_level=2)
    told = drive(s, 2, fail_first=True)
    events = s.drain_events()
    assert [(e["kind"], e["level"], e["genes"], e["carried"]) for e in events] == [
        ("ctf_level", 1, 6, 11)]  # 12 evaluated, one failed: a failure is not a result
    study = s.inner._get_study()
    carried = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(carried) == 11
    # each carried point, read back in the genome, is the genotype that was scored, and its
    # value is that genotype's score: nothing was averaged away
    by_value = {round(t.value, 12): t for t in carried}
    for x in told[1:]:
        t = by_value[round(score(x), 12)]
        z = np.array([t.params[f"g{i}"] for i in range(6)])
        np.testing.assert_allclose(z[s.levels[1]], x)


def test_the_first_level_ties_layers_and_later_ones_untie_them():
    sp = hard_space()
    s = make_strategy("ctf-gp", sp, seed=3, population_size=6, generations_per_level=1)
    model_a = np.array([a.model == "a" for a in sp.axes])
    xs = s.ask()
    assert all(np.ptp(x[model_a]) == 0 and np.ptp(x[~model_a]) == 0 for x in xs)
    np.testing.assert_allclose(xs[0], sp.initial)  # the uniform merge first, as `gp`
    s.tell(xs, [score(x) for x in xs])
    assert any(np.ptp(x[model_a]) > 0 for x in s.ask())  # level 1: per model and filter


def test_state_survives_json_across_a_level_change():
    sp = hard_space()
    s = make_strategy("ctf-gp", sp, seed=5, population_size=4, generations_per_level=1)
    drive(s, 2)
    state = json.loads(json.dumps(s.state_dict()))
    r = make_strategy("ctf-gp", sp, seed=5, population_size=4, generations_per_level=1)
    r.load_state_dict(state)
    assert r.level == s.level == 2
    for a, b in zip(drive(s, 2), drive(r, 2), strict=True):  # crosses into level 3
        np.testing.assert_array_equal(a, b)


def test_unset_generations_per_level_keeps_each_strategys_own_default():
    """One level a generation suits ctf-gp (it keeps every result), three suit ctf (each
    level's CMA-ES starts afresh): bench/search_quality.py, docs/performance.md."""
    from llm_evo.config import parse_config
    from llm_evo.strategies import strategy_from_config

    def config(**search):
        return parse_config({"genome": {"models": ["a", "b"], "merge_method": "linear"},
                             "tasks": ["t"], "search": search})

    sp = hard_space()
    assert strategy_from_config(sp, config(strategy="ctf-gp")).generations_per_level == 1
    assert strategy_from_config(sp, config(strategy="ctf")).generations_per_level == 3
    chosen = config(strategy="ctf-gp", generations_per_level=4)
    assert strategy_from_config(sp, chosen).generations_per_level == 4


def test_a_pareto_search_carries_each_objective_vector():
    sp = hard_space()
    s = make_strategy("ctf-gp", sp, seed=2, population_size=4, n_objectives=2)
    told = []
    for _ in range(2):
        xs = s.ask()
        vectors = [[float(-np.sum((x - 0.9) ** 2)), float(-np.sum((x - 0.1) ** 2))]
                   for x in xs]
        s.tell(xs, [sum(v) for v in vectors], objectives=vectors)
        told += vectors
    trials = s.inner._get_study().trials  # level 2 has asked nothing yet: the 8 carried
    assert s.level == 2
    assert sorted(t.values for t in trials[:8]) == sorted(told)
