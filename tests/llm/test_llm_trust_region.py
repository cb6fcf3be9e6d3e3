"""The LLM strategy never throws away what its history knows (issue #16): part of each
generation is sampled around the best genome, and the LLM's mean is held in a trust
region around that best which shrinks while the LLM's proposals do not pay off. Real HTTP
against our own OpenAI-compatible test server (tests/llm/fault_server.py)."""

from __future__ import annotations

import numpy as np
from fault_server import FaultServer
from llm_helpers import make_space, make_strategy, of_kind, quadratic, run

from llm_evo.strategies import make_strategy as registry_make

TARGET = np.array([0.7, 0.3, 0.6, 0.4])
FITNESS = quadratic(TARGET)
# What SmolLM2 did in issue #16's worst seed: valid JSON, weights near 0, every generation.
USELESS = {"thought": "This can't be done.", "mean_genome": [[2, 1], [0, 3]]}


def test_half_the_generation_is_sampled_around_the_best(fault_server: FaultServer) -> None:
    fault_server.answer = lambda body: USELESS
    space = make_space()
    strategy = make_strategy(space, fault_server.url, population_size=8)
    run(strategy, 1, FITNESS)
    best = strategy.best_genotype.copy()
    population = strategy.ask()
    assert strategy._from_llm == 4  # the LLM's mean and 3 samples; 4 around the best
    span = space.upper - space.lower
    reach = 0.5 * span  # the trust region's starting radius
    assert np.all(np.abs(population[0] - best) <= reach + 1e-12)  # the mean was pulled in
    around_best = np.array(population[4:])
    assert np.linalg.norm(around_best - best, axis=1).mean() < np.linalg.norm(
        np.array(population[1:4]) - best, axis=1).mean()


def test_the_trust_region_shrinks_while_the_llm_does_not_pay_off(fault_server) -> None:
    fault_server.answer = lambda body: USELESS
    strategy = make_strategy(make_space(), fault_server.url, population_size=8)
    events, _ = run(strategy, 6, FITNESS)
    radii = [e["radius"] for e in of_kind(events, "trust_region")]
    assert len(radii) == 5 and radii[-1] < radii[0] and radii[-1] <= 0.5 / 4
    assert sum(not e["paid_off"] for e in of_kind(events, "trust_region")) >= 3
    # the LLM's useless mean is held next to the best genome, not in its corner
    mean = strategy.ask()[0]
    assert np.max(np.abs(mean - strategy.best_genotype)) <= strategy.radius + 1e-12
    assert np.max(np.abs(mean - strategy.best_genotype)) < 0.5


def test_the_trust_region_grows_when_the_llm_proposes_well(fault_server) -> None:
    good = [[round(100 * TARGET[0]), round(100 * TARGET[1])],
            [round(100 * TARGET[2]), round(100 * TARGET[3])]]
    fault_server.answer = lambda body: {"thought": "the target", "mean_genome": good}
    strategy = make_strategy(make_space(), fault_server.url, population_size=8)
    events, _ = run(strategy, 2, FITNESS)
    (first,) = of_kind(events, "trust_region")
    assert first["paid_off"] and first["radius"] == 1.0
    assert max(FITNESS(g) for g in [strategy.best_genotype]) > -1e-3


def test_a_useless_llm_does_no_worse_than_random_search(fault_server: FaultServer) -> None:
    """48 evaluations, 5 seeds: the median best with an LLM that answers USELESS every
    generation is at least random search's (LLM-Evo-Merge's design is the control, and
    loses)."""
    fault_server.answer = lambda body: USELESS
    space = make_space()

    def best_of(strategy) -> float:
        _, population = run(strategy, 6, FITNESS)
        return max(FITNESS(g) for gen in population for g in gen)

    ours = [best_of(make_strategy(space, fault_server.url, seed=s, population_size=8))
            for s in range(5)]
    original = [best_of(make_strategy(space, fault_server.url, seed=s, population_size=8,
                                      best_share=0, trust_region=False)) for s in range(5)]
    random = [best_of(registry_make("random", space, seed=s, population_size=8))
              for s in range(5)]
    assert np.median(ours) >= np.median(random) > np.median(original)


def test_state_dict_keeps_the_trust_region(fault_server: FaultServer) -> None:
    fault_server.answer = lambda body: USELESS
    a = make_strategy(make_space(), fault_server.url, population_size=8)
    run(a, 3, FITNESS)
    pending = [x.tolist() for x in a.ask()]
    b = make_strategy(make_space(), fault_server.url, seed=99, population_size=8)
    b.load_state_dict(a.state_dict())
    assert b.radius == a.radius < 0.5 and b._from_llm == a._from_llm
    assert [x.tolist() for x in b.ask()] == pending
