"""`search.init: data`: the config schema, and strategies that start at the data weights."""

from __future__ import annotations

import numpy as np
import pytest

from llm_evo.config import load_config
from llm_evo.errors import ConfigError
from llm_evo.mix.seed import initial_genotype
from llm_evo.resolve import build_genome
from llm_evo.session.options import RunOptions
from llm_evo.session.search_loop import SearchLoop
from llm_evo.storage import RunStorage
from tests.e2e_helpers import write_config


def _config(tmp_path, tiny_family, search: dict, **kw):
    return write_config(tmp_path, tiny_family, extra={"search": search}, **kw)


@pytest.mark.parametrize(("search", "extra", "needle"), [
    ({"init": "data"}, {}, "search.init: data needs search.example_data"),
    ({"example_data": "x.jsonl"}, {}, "search.init is not data"),
    ({"init": "data", "example_data": "x.jsonl", "temperature": 0}, {}, "search.temperature"),
    ({"init": "data", "example_data": "x.jsonl"}, {"random_init": True}, "random_init"),
    ({"init": "bogus"}, {}, "search.init"),
])
def test_schema(tmp_path, tiny_family, search, extra, needle):
    path = write_config(tmp_path, tiny_family, extra={"search": search, **extra})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert needle in str(info.value)


def test_initial_genotype_sets_every_group_and_filter(tmp_path, tiny_family):
    path = write_config(tmp_path, tiny_family, method="ties",
                        extra={"genome": {"filters": ["self_attn"]}})
    genome = build_genome(load_config(path))
    x4 = initial_genotype(genome, [0.8, 0.2]).reshape(genome.shape)
    w, d = genome.params.index("weight"), genome.params.index("density")
    assert genome.shape[0] == 2 and genome.shape[2] == 2  # 2 layer groups, 2 filter sets
    assert np.all(x4[:, 0, :, w] == 0.8) and np.all(x4[:, 1, :, w] == 0.2)
    assert np.all(x4[..., d] == 1.0)  # density keeps its default
    with pytest.raises(ConfigError, match="3 weight"):
        initial_genotype(genome, [0.5, 0.3, 0.2])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["cma", "random"])
def test_strategies_start_at_the_data_weights(tmp_path, tiny_family, arith_jsonl, strategy):
    """With init: data on arith examples, ft_arith's weight genes start above
    ft_category's in every layer group: CMA-ES's mean and random search's first
    candidate. The weights are recorded as an event of the run."""
    path = _config(tmp_path, tiny_family, {"strategy": strategy, "init": "data",
                                           "example_data": str(arith_jsonl),
                                           "temperature": 1.0})
    config = load_config(path)
    genome = build_genome(config)
    controller = SearchLoop(config, genome, RunOptions(storage_path=str(tmp_path / "s")),
                            echo=lambda m: None)
    strat = controller._strategy()
    event = strat.events[0]
    assert event["kind"] == "init_data" and event["temperature"] == 1.0
    w_arith, w_cat = event["weights"]
    assert w_arith > 0.9 > 0.1 > w_cat  # T = 1: loss 1.24 vs 3.94
    start = strat.search_mean() if strategy == "cma" else strat.ask()[0]
    x4 = np.asarray(start).reshape(genome.shape)
    assert np.allclose(x4[:, 0, :, 0], w_arith) and np.allclose(x4[:, 1, :, 0], w_cat)
    # the default (uniform) start differs: 1/2 each
    assert np.allclose(genome.space.initial, 0.5)
    # the controller drains the event into the ledger when the run opens
    run_id, _, _ = controller._open_run(strat)
    kinds = [e["kind"] for e in RunStorage(tmp_path / "s").events(run_id)]
    assert "init_data" in kinds


@pytest.mark.slow
def test_relative_example_data_resolves_against_the_config_dir(tmp_path, tiny_family,
                                                               arith_jsonl):
    """`example_data: ex.jsonl` is found beside the config; a path that exists nowhere is
    a one-line ConfigError."""
    (tmp_path / "ex.jsonl").write_text(arith_jsonl.read_text())
    for name in ("nope.jsonl", "ex.jsonl"):
        path = _config(tmp_path, tiny_family, {"init": "data", "example_data": name})
        config = load_config(path)
        controller = SearchLoop(config, build_genome(config),
                                RunOptions(storage_path=str(tmp_path / "s"),
                                           config_dir=str(tmp_path)), echo=print)
        if name == "nope.jsonl":
            with pytest.raises(ConfigError,
                               match="search.example_data: nope.jsonl: file not found"):
                controller._strategy()
        else:
            assert controller._strategy().events[0]["weights"][0] > 0.5
