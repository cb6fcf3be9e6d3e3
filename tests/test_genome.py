"""Genotype <-> mergekit config: ranges, layout, invalid genotypes, mergekit acceptance."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from mergekit.config import MergeConfiguration

from llm_evo.config import GenomeConfig
from llm_evo.errors import InvalidGenotypeError
from llm_evo.genome import NORMALIZE_EPS, Genome

METHODS = ["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]


def make(method="linear", n_layers=8, **kw) -> Genome:
    models = ["/m/ft_a", "/m/ft_b"] if method == "slerp" else ["/m/ft_a", "/m/ft_b", "/m/ft_c"]
    base = None if method in ("linear", "slerp") else "/m/base"
    cfg = GenomeConfig(models=models, merge_method=method, base_model=base, **kw)
    return Genome(cfg, models, base, n_layers)


def test_axes_layout_matches_mergekit_evolve_tensor():
    g = make("ties", layer_granularity=4, filters=["self_attn", "mlp"])
    assert g.shape == (2, 3, 3, 2)
    assert g.n_genes == 36
    first, last = g.space.axes[0], g.space.axes[-1]
    assert (first.layers, first.model, first.filter, first.param) == ((0, 4), "ft_a",
                                                                        "self_attn", "weight")
    assert (last.layers, last.model, last.filter, last.param) == ((4, 8), "ft_c", None, "density")
    assert "layers 4-7 / ft_c / * / density" == last.label


def test_ranges_follow_allow_negative_weights():
    pos = make("task_arithmetic")
    neg = make("task_arithmetic", allow_negative_weights=True)
    assert pos.space.lower.min() == 0 and neg.space.lower.min() == -1
    dens = make("ties", allow_negative_weights=True)
    density = [a for a in dens.space.axes if a.param == "density"]
    assert all(a.low == 0 and a.high == 1 for a in density)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("granularity", [0, 2])
def test_random_genotypes_make_valid_mergekit_configs(method, granularity):
    filters = ["self_attn"] if method != "slerp" else None
    g = make(method, layer_granularity=granularity, filters=filters)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(g.space.lower, g.space.upper)
        text = g.to_yaml(x)
        cfg = MergeConfiguration.model_validate(yaml.safe_load(text))
        assert cfg.merge_method == method
        assert "&id" not in text  # no YAML anchors in files people read


def test_smooth_writes_gradients():
    g = make("linear", layer_granularity=2, smooth=True)
    x = np.linspace(0.1, 0.9, g.n_genes)
    d = g.merge_config_dict(x)
    weight = d["models"][0]["parameters"]["weight"]
    assert isinstance(weight, list) and len(weight) == 4
    MergeConfiguration.model_validate(d)


def test_slerp_is_one_t_per_group():
    g = make("slerp", layer_granularity=4)
    assert g.n_genes == 2
    d = g.merge_config_dict([0.25, 0.75])
    assert [s["parameters"]["t"] for s in d["slices"]] == [0.25, 0.75]
    assert d["base_model"] == "/m/ft_a"


def test_near_zero_normalised_weight_sum_is_invalid_not_a_crash():
    g = make("linear", allow_negative_weights=True)
    x = np.array([0.5, -0.5, NORMALIZE_EPS / 10])
    with pytest.raises(InvalidGenotypeError, match="about zero"):
        g.merge_config_dict(x)
    unnormalised = make("linear", allow_negative_weights=True, normalize=False)
    unnormalised.merge_config_dict(x)  # no division, so fine


@pytest.mark.parametrize("bad, match", [
    ([0.1, 0.2], "genes"),
    ([0.1, np.nan, 0.3], "not finite"),
    ([0.1, 1.5, 0.3], "outside"),
])
def test_bad_genotypes(bad, match):
    with pytest.raises(InvalidGenotypeError, match=match):
        make("linear").check(bad)


def test_parent_genotype_selects_one_model():
    g = make("task_arithmetic", layer_granularity=4)
    x = g.parent_genotype(1)
    d = g.merge_config_dict(x)
    weights = [[s["parameters"]["weight"] for s in sl["sources"] if "parameters" in s]
               for sl in d["slices"]]
    assert weights == [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]


def test_granularity_must_divide_layers():
    cfg = GenomeConfig(models=["a", "b"], merge_method="linear", layer_granularity=3)
    with pytest.raises(InvalidGenotypeError, match="does not divide"):
        Genome(cfg, ["a", "b"], None, 8)


def test_linear_ignores_a_base_model():
    cfg = GenomeConfig(models=["/m/a", "/m/b"], merge_method="linear", base_model="/m/base")
    d = Genome(cfg, ["/m/a", "/m/b"], "/m/base", 8).merge_config_dict([0.5, 0.5])
    assert "base_model" not in d
    assert [s["model"] for s in d["slices"][0]["sources"]] == ["/m/a", "/m/b"]
