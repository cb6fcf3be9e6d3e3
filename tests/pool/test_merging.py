"""Pairwise merges through real mergekit: the configs it is given and what it writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from llm_evo.config import parse_pool_config
from llm_evo.pool.merging import pair_merge_config
from tests.e2e_helpers import family_dir


def section(**pool):
    return parse_pool_config({"pool": {"models": ["a", "b"], "base_model": "base", **pool},
                              "tasks": ["t"]}).pool


def test_slerp_interpolates_from_the_first_parent():
    cfg = pair_merge_config(section(t=0.3), "A", "B", "BASE")
    assert cfg == {"merge_method": "slerp", "base_model": "A",
                   "models": [{"model": "A"}, {"model": "B"}], "parameters": {"t": 0.3}}


def test_linear_and_task_arithmetic_weights():
    lin = pair_merge_config(section(merge_method="linear", t=0.25), "A", "B", "BASE")
    assert [m["parameters"]["weight"] for m in lin["models"]] == [0.75, 0.25]
    assert "base_model" not in lin and lin["parameters"]["normalize"] is True
    ta = pair_merge_config(section(merge_method="task_arithmetic", weights=(1.0, 1.0),
                                   dtype="float32"), "A", "B", "BASE")
    assert ta["base_model"] == "BASE" and ta["dtype"] == "float32"
    assert ta["parameters"]["normalize"] is False


def _weights(path) -> dict:
    return load_file(f"{path}/model.safetensors")


@pytest.mark.parametrize("method", ["slerp", "linear", "task_arithmetic"])
def test_a_real_merge_lies_between_its_parents(tmp_path, tiny_family, method):
    root = family_dir(tiny_family)
    a, b, base = f"{root}/ft_arith", f"{root}/ft_category", f"{root}/base"
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    cfg = pair_merge_config(section(merge_method=method), a, b, base)
    out = tmp_path / "merged"
    run_merge(MergeConfiguration.model_validate(cfg), out_path=str(out),
              options=MergeOptions(copy_tokenizer=True, quiet=True))
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    wa, wb, wm = _weights(a), _weights(b), _weights(out)
    name = "model.layers.0.mlp.up_proj.weight"
    mean = (wa[name] + wb[name]) / 2
    # t = 0.5 / equal weights: the merge is (close to) the midpoint of its parents
    assert torch.allclose(wm[name], mean, atol=5e-3 if method == "slerp" else 1e-5)
