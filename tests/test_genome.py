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
    assert all(a.low == 0 and a.high == 1 and a.bounded for a in density)


def test_negative_weights_are_unbounded_as_in_mergekit_evolve():
    """mergekit-evolve's CMA-ES genes have no bounds and signed weights are used raw:
    [-1, 1] is where a search starts and samples, not a wall."""
    g = make("ties", allow_negative_weights=True)
    weights = [a.index for a in g.space.axes if a.param == "weight"]
    x = g.space.initial.copy()
    x[weights[0]], x[weights[1]] = 3.5, -2.0
    clipped = g.space.clip(x)
    assert clipped[weights[0]] == 3.5 and clipped[weights[1]] == -2.0
    assert g.space.clip_range(x)[weights[0]] == 1.0  # the LLM's fixed scale still clips
    d = g.merge_config_dict(x)
    assert d["slices"][0]["sources"][0]["parameters"]["weight"] == 3.5
    x[[a.index for a in g.space.axes if a.param == "density"][0]] = 1.5
    with pytest.raises(InvalidGenotypeError, match="density = 1.5 is outside"):
        g.check(x)  # densities keep their [0, 1] bounds
    bounded = make("ties")
    assert bounded.space.clip(x)[weights[0]] == 1.0
    np.testing.assert_allclose(g.space.initial[weights], 1 / 3)  # mergekit's x0: 1/n


def _mergekit_genome(tmp_path, method, n_models, **kw):
    """mergekit-evolve's own ModelGenome over config-only model folders."""
    import json

    from mergekit.evo.genome import ModelGenome, ModelGenomeDefinition

    names = [f"ft_{chr(97 + i)}" for i in range(n_models)] + ["base"]
    for name in names:
        (tmp_path / name).mkdir(exist_ok=True)
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
             "num_hidden_layers": 8}))
    models = [str(tmp_path / n) for n in names[:-1]]
    base = str(tmp_path / "base") if method in ("task_arithmetic", "ties", "dare_ties") else None
    theirs = ModelGenome(ModelGenomeDefinition(models=models, merge_method=method,
                                               base_model=base, **kw))
    ours = Genome(GenomeConfig(models=models, merge_method=method, base_model=base, **kw),
                  models, base, 8)
    return ours, theirs


def _slices(config: dict) -> list:
    """The slices as plain data, floats rounded (softmax in torch vs numpy: last digit)."""
    def rounded(value):
        if isinstance(value, float):
            return round(value, 12)
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, list):
            return [rounded(v) for v in value]
        return value

    cfg = MergeConfiguration.model_validate(config)
    return rounded([s.model_dump(mode="json") for s in cfg.slices])


@pytest.mark.parametrize("method, kw", [
    ("linear", {}),
    ("task_arithmetic", {"allow_negative_weights": True}),
    ("ties", {"filters": ["mlp"]}),
    ("dare_ties", {"allow_negative_weights": True}),
    ("slerp", {}),
    ("slerp", {"tokenizer_source": "base"}),
])
def test_merge_configs_match_mergekit_evolve(tmp_path, method, kw):
    """Genotype -> merge config equals mergekit-evolve's for the same genotype (genes in
    our bounds; mergekit's abs() of negative genes is the one documented difference)."""
    ours, theirs = _mergekit_genome(tmp_path, method, 3, layer_granularity=4, **kw)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.uniform(ours.space.lower, ours.space.upper)
        if kw.get("allow_negative_weights"):  # beyond [-1, 1]: unbounded there and here
            x = np.where([a.bounded for a in ours.space.axes], x, x * 2.5)
        mine = ours.merge_config_dict(x, dtype="bfloat16")
        want = theirs.genotype_merge_config(x).model_dump(mode="json")
        assert _slices(mine) == _slices(want)


def test_slerp_over_n_models_picks_the_top_two_per_group():
    cfg = GenomeConfig(models=["/m/a", "/m/b", "/m/c"], merge_method="slerp",
                       layer_granularity=4)
    g = Genome(cfg, list(cfg.models), None, 8)
    assert g.shape == (2, 3, 1, 1) and g.slerp_top2 and not g.is_slerp
    assert not any(a.bounded for a in g.space.axes)
    np.testing.assert_allclose(g.space.initial, 1 / 3)
    d = g.merge_config_dict([0.1, 0.9, 0.5, 2.0, -1.0, 1.0])
    first, second = d["slices"]
    assert [s["model"] for s in first["sources"]] == ["/m/b", "/m/c"]
    assert first["base_model"] == "/m/b"
    assert first["parameters"]["t"] == pytest.approx(np.exp(0.5) / (np.exp(0.9) + np.exp(0.5)))
    assert [s["model"] for s in second["sources"]] == ["/m/a", "/m/c"]
    assert second["parameters"]["t"] == pytest.approx(1 / (1 + np.exp(1.0)))
    MergeConfiguration.model_validate(d)
    tie = g.merge_config_dict(g.space.initial)  # equal genes: the earlier models, t = 0.5
    assert [s["model"] for s in tie["slices"][0]["sources"]] == ["/m/a", "/m/b"]
    assert tie["slices"][0]["parameters"]["t"] == pytest.approx(0.5)
    assert g.parent_genotype(0) is None


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
