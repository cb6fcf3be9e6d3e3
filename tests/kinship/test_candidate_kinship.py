"""Candidate kinship without merging, checked against real merges: random genotypes of the
tiny family are merged with mergekit, the kinship engine measures the merged checkpoints,
and the prediction from the Gram statistics (or the sketch) must agree.

A third source model (per-tensor mixes of the two fine-tunes' deltas) gives the merges more
than two directions to combine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from llm_evo.config import GenomeConfig
from llm_evo.errors import ConfigError
from llm_evo.genome import Genome
from llm_evo.kinship import kinship_matrix
from llm_evo.kinship.candidate import build_delta_stats, candidate_kinship
from llm_evo.kinship.layout import assign_slots, tensor_slots
from tests.conftest import _load_script
from tests.e2e_helpers import family_dir

N_GENOTYPES = 10
SKETCH = 32768  # the KinshipConfig default


@pytest.fixture(scope="module")
def family(tiny_family, tmp_path_factory) -> dict:
    root = family_dir(tiny_family)
    base, arith, category = (str(root / m) for m in ("base", "ft_arith", "ft_category"))
    mix = _load_script("make_pool_seeds").mixed_delta_model(
        root, tmp_path_factory.mktemp("family") / "ft_mix")
    return {"base": base, "models": [arith, category, str(mix)]}


def make_genome(family: dict, method: str, **extra) -> Genome:
    models = family["models"][:2] if method == "slerp" else family["models"]
    cfg = GenomeConfig(models=models, merge_method=method, base_model=family["base"],
                       layer_granularity=4, filters=["self_attn", "mlp"], **extra)
    return Genome(cfg, models, family["base"], 8)


def random_genotypes(genome: Genome, k: int, seed: int, density_min: float = 0.0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    density = [a.index for a in genome.space.axes if a.param == "density"]
    while len(out) < k:
        x = rng.uniform(genome.space.lower, genome.space.upper)
        x[density] = density_min + (1.0 - density_min) * x[density]
        genome.check(x)
        out.append(x)
    return out


def merge_all(genome: Genome, genotypes: list, out: Path, seed: int = 0) -> list[str]:
    """Real mergekit merges (float32 on the CPU, one torch thread: OpenMP spins on a busy box)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)  # dare_ties drops at random
    paths = []
    try:
        for i, x in enumerate(genotypes):
            path = out / f"s{seed}_merge_{i}"
            config = MergeConfiguration.model_validate(genome.merge_config_dict(x, "float32"))
            run_merge(config, out_path=str(path), options=MergeOptions(
                quiet=True, copy_tokenizer=False, write_model_card=False, lazy_unpickle=True))
            paths.append(str(path))
    finally:
        torch.set_num_threads(threads)
    return paths


@pytest.fixture(scope="module")
def stats3(family):
    """One read of base + 3 models, with the sketch and magnitude ranks, for every method."""
    genome = make_genome(family, "ties")
    slots = tensor_slots(genome)
    return build_delta_stats(family["models"], family["base"], slots, sketch_size=SKETCH,
                             sketch_ranks=True)


CASES = {
    # method, genome extras, genotypes, density floor, tolerance (cs, pcc: absolute)
    "linear": ("linear", {"normalize": False}, N_GENOTYPES, 0.0, 1e-5),
    "linear-normalized-smooth": ("linear", {"smooth": True}, 4, 0.0, 1e-5),
    "task_arithmetic": ("task_arithmetic", {}, N_GENOTYPES, 0.0, 1e-5),
    "task_arithmetic-normalized-smooth": ("task_arithmetic", {"smooth": True,
                                                              "normalize": True}, 4, 0.0, 1e-5),
    "slerp": ("slerp", {}, N_GENOTYPES, 0.0, 1e-5),
    "ties": ("ties", {}, N_GENOTYPES, 0.0, 0.02),
    # Below density 0.1, two real dare merges of the same genotypes differ from each other by
    # more than 0.02 on a model this small (docs/kinship-search.md), so "exact" is not
    # defined to 0.02 there.
    "dare_ties": ("dare_ties", {}, N_GENOTYPES, 0.1, 0.02),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_candidate_kinship_matches_real_merges(case, family, stats3, tmp_path):
    method, extra, k, density_min, tol = CASES[case]
    genome = make_genome(family, method, **extra)
    slots = tensor_slots(genome)
    stats = stats3
    if method == "slerp":  # two models: its own (exact, no sketch) read
        stats = build_delta_stats(genome.models, family["base"], slots)
    model = candidate_kinship(genome, slots, stats)
    assert model.exact == (method not in ("ties", "dare_ties"))
    genotypes = random_genotypes(genome, k, seed=sum(map(ord, case)), density_min=density_min)
    merged = kinship_matrix(merge_all(genome, genotypes, tmp_path), family["base"])
    assert not merged.report.tensors_skipped
    pairs = np.triu_indices(k, 1)
    for metric in ("cs", "pcc", "ed"):
        predicted = model.matrix(metric, genotypes)[pairs]
        real = merged.metric(metric)[pairs]
        if metric == "ed":
            err = np.abs(predicted - real) / real
            assert err.max() <= (tol if model.exact else 0.05), (metric, err.max())
        else:
            err = np.abs(predicted - real)
            assert err.max() <= tol, (metric, err.max())


DARE_SEEDS = 6


@pytest.mark.slow
def test_dare_estimate_matches_the_expected_kinship_at_every_density(family, stats3, tmp_path):
    """Densities anywhere in [0, 1]: dare's random drop makes the real kinship itself random
    (at density 0.003 about 50 deltas of a 16k-element tensor survive, times 300), so the
    exact value the sketch is held to is its expectation over the drop, the mean over
    DARE_SEEDS real merges of each genotype. A lone realisation may stray further
    (docs/kinship-search.md)."""
    genome = make_genome(family, "dare_ties")
    model = candidate_kinship(genome, tensor_slots(genome), stats3)
    genotypes = random_genotypes(genome, N_GENOTYPES, seed=11, density_min=0.0)
    dens = [a.index for a in genome.space.axes if a.param == "density"]
    assert min(float(g[dens].min()) for g in genotypes) < 0.1  # the low densities are covered
    pairs = np.triu_indices(N_GENOTYPES, 1)
    real = [kinship_matrix(merge_all(genome, genotypes, tmp_path, seed=s), family["base"])
            for s in range(DARE_SEEDS)]
    for metric in ("cs", "pcc"):
        expected = np.mean([r.metric(metric)[pairs] for r in real], axis=0)
        err = np.abs(model.matrix(metric, genotypes)[pairs] - expected)
        assert err.max() <= 0.02, (metric, err.max())


def test_slots_follow_mergekit_rules():
    cfg = GenomeConfig(models=["a", "b"], merge_method="task_arithmetic", base_model="base",
                       layer_granularity=2, filters=["self_attn", "mlp"], smooth=True)
    genome = Genome(cfg, ["a", "b"], "base", 4)
    layers = [[(f"model.layers.{i}.self_attn.q_proj.weight", ()),
               (f"model.layers.{i}.post_attention_layernorm.weight", ())] for i in range(4)]
    slots = assign_slots(genome, [("model.embed_tokens.weight", ())], layers,
                         [("model.norm.weight", ()), ("lm_head.weight", ())])
    by = {s.name: s for s in slots}
    assert by["model.embed_tokens.weight"].groups == ((0, 1.0),)
    # smooth: layer l reads the 2-value gradient at t = l / 3
    (g0, w0), (g1, w1) = by["model.layers.1.self_attn.q_proj.weight"].groups
    assert (g0, g1) == (0, 1) and w0 == pytest.approx(2 / 3) and w1 == pytest.approx(1 / 3)
    assert by["model.layers.3.self_attn.q_proj.weight"].groups == ((1, 1.0),)
    # post weights are planned at t = 0: the first group's value
    assert by["lm_head.weight"].groups == ((0, 1.0),)
    assert by["model.layers.0.self_attn.q_proj.weight"].filter_index == 0
    # "post_attention_layernorm" contains neither "self_attn" nor "mlp": the None set
    assert by["model.layers.0.post_attention_layernorm.weight"].filter_index == 2
    plain = Genome(cfg.model_copy(update={"smooth": False}), ["a", "b"], "base", 4)
    slots = assign_slots(plain, [], layers, [("lm_head.weight", ())])
    assert {s.name: s.groups for s in slots}["lm_head.weight"] == ((1, 1.0),)
    assert {s.name: s.groups for s in slots}["model.layers.2.self_attn.q_proj.weight"] == (
        (1, 1.0),)


def test_linear_without_base_is_a_config_error(family):
    cfg = GenomeConfig(models=family["models"][:2], merge_method="linear")
    genome = Genome(cfg, family["models"][:2], None, 8)
    from llm_evo.config import KinshipConfig
    from llm_evo.kinship.penalty import build_penalty

    with pytest.raises(ConfigError, match="genome.base_model"):
        build_penalty(KinshipConfig(penalty=1.0), genome)
