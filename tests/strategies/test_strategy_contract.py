"""One contract every search strategy must honour (cf. optuna's sampler tests).

Each registered strategy is driven through ask/tell on a synthetic fitness, and must be
seeded, stay in the box, survive failed candidates, and resume exactly from state_dict().
Each is built from the registry with only its own options (named by its constructor) and
opens no connection while being built. The llm strategy runs it over real HTTP against the
well-behaved mode of our own OpenAI-compatible test server (tests/llm/fault_server.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm_evo.config import GenomeConfig, parse_config
from llm_evo.errors import ConfigError
from llm_evo.genome import Genome
from llm_evo.strategies import (
    STRATEGIES,
    strategy_class,
    strategy_from_config,
    strategy_options,
)
from llm_evo.strategies import make_strategy as _make_strategy
from tests.llm.fault_server import ConnectionCounter, FaultServer

_SERVER: FaultServer | None = None


def make_strategy(name, space, **kwargs):
    """Every strategy by name; the llm one pointed at the shared test server."""
    if name == "llm":
        kwargs.update(base_url=_SERVER.url, model="test-model", api_key="sk-contract")
    return _make_strategy(name, space, **kwargs)


def space(negative=False):
    cfg = GenomeConfig(models=["a", "b", "c"], merge_method="ties", base_model="base",
                       layer_granularity=4, allow_negative_weights=negative)
    return Genome(cfg, ["a", "b", "c"], "base", 8).space


def fitness(x: np.ndarray) -> float:
    target = np.linspace(0.2, 0.8, x.size)
    return float(-np.sum((x - target) ** 2))


def drive(strategy, generations, fail_every=0):
    seen = []
    for _ in range(generations):
        xs = strategy.ask()
        scores = [None if fail_every and i % fail_every == 0 else fitness(x)
                  for i, x in enumerate(xs)]
        strategy.tell(xs, scores)
        seen.append([x.tolist() for x in xs])
    return seen


@pytest.fixture(scope="module")
def llm_server():
    global _SERVER
    _SERVER = FaultServer(api_key="sk-contract", rows=2, cols=6).start()
    yield _SERVER
    _SERVER.stop()


@pytest.fixture(params=sorted(STRATEGIES))
def name(request, llm_server):
    return request.param


def test_population_and_bounds(name):
    sp = space(negative=True)
    s = make_strategy(name, sp, seed=1, population_size=6)
    for _ in range(3):
        xs = s.ask()
        assert len(xs) == 6
        for x in xs:
            assert x.shape == (sp.n_genes,)
            assert np.all(x >= sp.bound_lower) and np.all(x <= sp.bound_upper)
        s.tell(xs, [fitness(x) for x in xs])


def test_default_population_is_documented_formula(name):
    sp = space()
    s = make_strategy(name, sp, seed=0)
    assert s.population_size == 4 + int(3 * np.log(sp.n_genes))


def test_same_seed_same_proposals(name):
    a = drive(make_strategy(name, space(), seed=3, population_size=5), 3)
    b = drive(make_strategy(name, space(), seed=3, population_size=5), 3)
    c = drive(make_strategy(name, space(), seed=4, population_size=5), 3)
    assert a == b
    assert a != c


def test_failed_candidates_do_not_break_the_search(name):
    s = make_strategy(name, space(), seed=0, population_size=6)
    drive(s, 3, fail_every=2)
    s.tell(s.ask(), [None] * 6)  # a generation where everything failed
    assert len(s.ask()) == 6


def test_state_dict_resumes_exactly(name):
    full = make_strategy(name, space(), seed=5, population_size=5)
    expected = drive(full, 5)
    first = make_strategy(name, space(), seed=5, population_size=5)
    part = drive(first, 2)
    state = json.loads(json.dumps(first.state_dict()))  # must survive storage as JSON
    second = make_strategy(name, space(), seed=999, population_size=5)
    second.load_state_dict(state)
    assert part + drive(second, 3) == expected


def test_ask_is_idempotent_until_tell(name):
    s = make_strategy(name, space(), seed=0, population_size=4)
    assert [x.tolist() for x in s.ask()] == [x.tolist() for x in s.ask()]


def test_random_init_moves_the_start(name):
    plain = make_strategy(name, space(), seed=2, population_size=4).ask()
    randomised = make_strategy(name, space(), seed=2, population_size=4, random_init=True).ask()
    assert not np.allclose(np.mean(plain, axis=0), np.mean(randomised, axis=0))


def test_cma_improves_on_a_smooth_objective():
    s = make_strategy("cma", space(), seed=0, population_size=8)
    first = max(fitness(x) for x in s.ask())
    drive(s, 25)
    best = max(fitness(x) for x in s.ask())
    assert best > first


@pytest.mark.parametrize("name", [n for n in sorted(STRATEGIES) if n != "llm"])
def test_resume_mid_generation_in_a_fresh_process_is_exact(name, tmp_path):
    """A checkpoint taken between ask and tell, restored in another Python process
    (where bytes hashes are salted differently), continues bit-identically. (The llm
    strategy's child process would need the test server; its resume is in tests/llm.)"""
    import subprocess
    import sys

    s = make_strategy(name, space(), seed=11, population_size=4)
    drive(s, 1)
    asked = [x.tolist() for x in s.ask()]
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(s.state_dict()))
    s.tell([np.array(x) for x in asked], [fitness(np.array(x)) for x in asked])
    expected = [x.tolist() for x in s.ask()]
    code = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
from tests.strategies.test_strategy_contract import space, fitness
from llm_evo.strategies import make_strategy
s = make_strategy({name!r}, space(), seed=0, population_size=4)
s.load_state_dict(json.loads(open({str(state_file)!r}).read()))
xs = s.ask()
s.tell(xs, [fitness(x) for x in xs])
print(json.dumps([x.tolist() for x in s.ask()]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "random", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == expected


# ---- options: each strategy takes its own, from the registry --------------------------------
def run_config(url=None, **search):
    """A run config that sets every strategy's options away from their defaults."""
    return parse_config({
        "genome": {"models": ["a", "b", "c"], "merge_method": "ties", "base_model": "base"},
        "tasks": ["t"], "random_init": True,
        "search": {"seed": 7, "population_size": 5, "sigma0": 0.35, "sigma_low": 0.02,
                   "sigma_high": 0.4, "generations_per_level": 2, **search},
        "llm": {"model": "test-model", "base_url": url or _SERVER.url, "top_k": 2},
    })


def own_options(name, config):
    """Every option any built-in strategy takes, as the config sets it; each strategy
    gets the ones its constructor names."""
    s = config.search
    everything = {"seed": s.seed, "population_size": s.population_size, "sigma0": s.sigma0,
                  "sigma_low": s.sigma_low, "sigma_high": s.sigma_high,
                  "random_init": config.random_init, "llm": config.llm,
                  "api_key": "sk-contract", "base_url": None, "model": None,
                  "n_objectives": 1, "generations_per_level": s.generations_per_level}
    options = strategy_options(strategy_class(name))
    assert set(options) <= set(everything), f"teach this test {name}'s new options"
    return {k: everything[k] for k in options}


def test_constructor_names_its_options(name):
    options = strategy_options(strategy_class(name))  # a **kwargs catch-all raises here
    assert options[:2] == ("seed", "population_size")
    foreign = {o for other in STRATEGIES for o in strategy_options(strategy_class(other))}
    for option in sorted(foreign - set(options)) + ["no_such_option"]:
        with pytest.raises(ConfigError, match=rf"^search\.strategy: {name} takes no option "
                                              rf"{option} \(its options: seed, "):
            make_strategy(name, space(), **{option: 1})


def test_from_config_gives_only_its_own_options(name):
    config = run_config(strategy=name)
    built = strategy_from_config(space(), config, {"api_key": "sk-contract"})
    assert type(built) is strategy_class(name)
    assert (built.seed, built.population_size) == (7, 5)
    expected = drive(make_strategy(name, space(), **own_options(name, config)), 3)
    assert drive(built, 3) == expected  # the same options: the same proposals
    plain = make_strategy(name, space(), **{**own_options(name, config), "random_init": False})
    assert drive(plain, 3) != expected  # so random_init (for one) did reach it


def test_building_opens_no_connection(name):
    with ConnectionCounter() as server:
        config = run_config(url=server.url, strategy=name)
        strategy_from_config(space(), config, {"api_key": "sk-contract"})
        make_strategy(name, space(), **{**own_options(name, config), "seed": 1})
        assert server.connections == 0
