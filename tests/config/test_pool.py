"""The pool config: defaults, one-line errors naming the field, shipped configs validate."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llm_evo.config import is_pool_config, load_pool_config, parse_pool_config, with_overrides
from llm_evo.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def minimal(**pool) -> dict:
    return {"pool": {"models": ["m1", "m2", "m3"], "base_model": "base", **pool},
            "tasks": ["t1"]}


def test_defaults_follow_the_paper():
    cfg = parse_pool_config(minimal())
    p = cfg.pool
    assert (p.top_k, p.merge_method, p.t, p.exploration, p.kinship_metric) == (
        3, "slerp", 0.5, True, "pcc")
    assert p.kinship_stop is None and p.max_evaluations is None
    assert cfg.tasks[0].name == "t1" and cfg.tasks[0].metric == "acc,none"


@pytest.mark.parametrize(("change", "needle"), [
    ({"models": ["m1"]}, "pool.models"),
    ({"models": ["m1", "m1"]}, "twice"),
    ({"base_model": "m1"}, "pool.base_model"),
    ({"top_k": 1}, "pool.top_k"),
    ({"t": 1.5}, "pool.t"),
    ({"merge_method": "ties"}, "pool.merge_method"),
    ({"weights": [0.5, 0.5]}, "pool.weights"),
    ({"kinship_metric": "kl"}, "pool.kinship_metric"),
    ({"max_evaluations": 2}, "max_evaluations"),
    ({"surprise": 1}, "pool.surprise"),
])
def test_bad_values_are_one_line_config_errors(change, needle):
    with pytest.raises(ConfigError) as info:
        parse_pool_config(minimal(**change), "p.yml")
    message = str(info.value)
    assert "\n" not in message and needle in message and message.startswith("p.yml")


def test_a_run_config_is_refused_with_a_pointer():
    with pytest.raises(ConfigError, match="run config"):
        parse_pool_config({"genome": {}, "tasks": ["t"]}, "run.yml")
    assert not is_pool_config({"genome": {}}) and is_pool_config(minimal())


def test_in_memory_evaluation_is_refused():
    with pytest.raises(ConfigError, match="in_memory"):
        parse_pool_config({**minimal(), "evaluation": {"in_memory": True}})


def test_weights_for_linear_and_overrides():
    cfg = parse_pool_config(minimal(merge_method="linear", t=0.25))
    assert cfg.pool.pair_weights == (0.75, 0.25)
    cfg = with_overrides(cfg, {"pool.top_k": 4, "pool.exploration": False, "limit": None})
    assert cfg.pool.top_k == 4 and cfg.pool.exploration is False
    with pytest.raises(ConfigError, match="command-line flags"):
        with_overrides(cfg, {"pool.top_k": 0})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_pool_config(tmp_path / "nope.yml")
    bad = tmp_path / "bad.yml"
    bad.write_text("pool: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yml"):
        load_pool_config(bad)


def test_every_shipped_pool_config_validates():
    configs = sorted((REPO / "configs" / "pool").glob("*.yml"))
    assert configs
    for path in configs:
        cfg = load_pool_config(path)
        assert len(cfg.pool.models) >= 4 and is_pool_config(yaml.safe_load(path.read_text()))
