"""The pool loop's parts that need no Ray: kinship measured once per pair, labels, config checks."""

from __future__ import annotations

import math

import pytest

from llm_evo.config import parse_pool_config
from llm_evo.errors import ConfigError
from llm_evo.session.options import PoolOptions
from llm_evo.session.pool_kinship import KinshipCache
from llm_evo.session.pool_loop import PoolLoop, _unique_labels
from llm_evo.storage import PoolLedger


def test_kinship_cache_measures_each_pair_once_and_records_it(tmp_path, pool_models):
    ledger = PoolLedger(tmp_path)
    run = ledger.create_run("{}", "h", {})
    cache = KinshipCache(str(pool_models["base"]), "pcc", ledger, run)
    names = ["ft_arith", "ft_category", "ta_hi_arith"]
    for name, path in zip(names, pool_models["models"][:3], strict=True):
        cache.paths[name] = str(path)
    cache.ensure([("ft_arith", "ft_category")])
    assert set(cache.values) == {("ft_arith", "ft_category")}
    # the two fine-tunes learned disjoint skills: their deltas are far less related than
    # a fine-tune and a merge that holds it at full weight
    assert cache("ft_arith", "ft_category") < cache("ft_arith", "ta_hi_arith")
    assert cache("ta_hi_arith", "ft_arith") == cache("ft_arith", "ta_hi_arith")  # symmetric
    assert len(ledger.kinship(run)) == 2  # only the pairs asked for so far were read
    assert not math.isnan(cache("ft_category", "ta_hi_arith"))
    stored = ledger.kinship(run)
    assert len(stored) == 3 and all(-1 <= v <= 1 for v in stored.values())


def test_labels_are_folder_names_made_unique():
    assert _unique_labels(["/a/x", "/b/y"]) == ["x", "y"]
    assert _unique_labels(["/a/x", "/b/x"]) == ["x-0", "x-1"]


def test_models_are_checked_before_ray_starts(tmp_path, pool_models):
    cfg = parse_pool_config({
        "pool": {"models": [str(m) for m in pool_models["models"]],
                 "base_model": str(tmp_path / "no_base")},
        "tasks": ["t"]})
    with pytest.raises(ConfigError, match="pool.base_model"):
        PoolLoop(cfg, PoolOptions(storage_path=str(tmp_path / "s")))
    assert not (tmp_path / "s").exists()  # nothing written for a config that cannot run
