"""Multi-objective strategies (search.objective: pareto): each takes one objective vector
per candidate, stays seeded and resumes exactly; the others refuse it in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm_evo.config import parse_config
from llm_evo.errors import ConfigError
from llm_evo.strategies import STRATEGIES, check_strategy, make_strategy, strategy_class
from tests.strategies.test_strategy_contract import space

MULTI = sorted(n for n in STRATEGIES if strategy_class(n).multi_objective)


def objectives(x: np.ndarray) -> list[float]:
    """Two conflicting goals: near 0.2 everywhere, or near 0.8 everywhere."""
    return [float(-np.sum((x - 0.2) ** 2)), float(-np.sum((x - 0.8) ** 2))]


def drive(strategy, generations):
    seen = []
    for _ in range(generations):
        xs = strategy.ask()
        objs = [objectives(x) for x in xs]
        objs[0] = None  # a failed candidate
        strategy.tell(xs, [None if o is None else sum(o) for o in objs], objectives=objs)
        seen.append([x.tolist() for x in xs])
    return seen


def test_the_multi_objective_strategies_are_the_expected_ones():
    assert MULTI == ["ctf-gp", "gp", "nsga2", "random", "tpe"]


@pytest.mark.parametrize("name", MULTI)
def test_multi_objective_is_seeded_and_resumes_exactly(name):
    kw = {"population_size": 4}
    if name != "random":
        kw["n_objectives"] = 2
    full = drive(make_strategy(name, space(), seed=3, **kw), 4)
    assert full == drive(make_strategy(name, space(), seed=3, **kw), 4)
    first = make_strategy(name, space(), seed=3, **kw)
    part = drive(first, 2)
    state = json.loads(json.dumps(first.state_dict()))
    second = make_strategy(name, space(), seed=0, **kw)
    second.load_state_dict(state)
    assert part + drive(second, 2) == full


@pytest.mark.parametrize("name", [n for n in MULTI if n != "random"])
def test_optuna_strategies_need_the_vectors(name):
    s = make_strategy(name, space(), seed=0, population_size=4, n_objectives=2)
    xs = s.ask()
    with pytest.raises(ValueError, match="one objective vector per genotype"):
        s.tell(xs, [1.0] * 4)
    with pytest.raises(ValueError, match="expected 2 objectives, got 3"):
        s.tell(xs, [1.0] * 4, objectives=[[1.0, 2.0, 3.0]] * 4)


def test_nsga2_moves_towards_the_front():
    """After 8 generations NSGA-II's population dominates its random first generation."""
    s = make_strategy("nsga2", space(), seed=1, population_size=8, n_objectives=2)
    first = [objectives(x) for x in s.ask()]
    drive(s, 8)
    last = [objectives(x) for x in s.ask()]
    assert np.mean([sum(o) for o in last]) > np.mean([sum(o) for o in first])


def config(strategy, objective, tasks=("t", "u")):
    return parse_config({"genome": {"models": ["a", "b"], "merge_method": "linear"},
                         "tasks": list(tasks),
                         "search": {"strategy": strategy, "objective": objective}})


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_pareto_needs_a_multi_objective_strategy(name):
    if name in MULTI:
        assert check_strategy(config(name, "pareto")) is strategy_class(name)
    else:
        with pytest.raises(ConfigError, match=rf"^search\.objective: pareto needs a "
                                              rf"multi-objective strategy, and {name} is not"):
            check_strategy(config(name, "pareto"))
    assert check_strategy(config(name, "weighted")) is strategy_class(name)


def test_pareto_with_one_task_and_an_unknown_strategy_are_config_errors():
    with pytest.raises(ConfigError, match="pareto needs at least two tasks"):
        config("nsga2", "pareto", tasks=("t",))
    with pytest.raises(ConfigError, match="unknown strategy 'bogus'"):
        check_strategy(config("bogus", "weighted"))
