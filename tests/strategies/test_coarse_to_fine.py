"""Coarse-to-fine CMA-ES: the tied levels it searches, and how it moves between them
(ctf-gp, which shares them, has test_coarse_to_fine_gp.py).

The shared contract (seeding, bounds, failures, resume) is test_strategy_contract.py's; this
file checks what only this strategy promises."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from llm_evo.config import GenomeConfig
from llm_evo.genome import Genome
from llm_evo.strategies import make_strategy
from llm_evo.strategies.coarse_to_fine import project, tied_space, tying_levels


def hard_space():
    """bench/search_quality.py's tiny-hard layout: 8 layers x 3 filters x 2 models."""
    cfg = GenomeConfig(models=["a", "b"], merge_method="task_arithmetic", base_model="base",
                       layer_granularity=1, filters=["self_attn", "mlp"], normalize=False)
    return Genome(cfg, ["a", "b"], "base", 8).space


def sizes(levels):
    return [int(a.max()) + 1 for a in levels]


def test_levels_go_from_one_gene_per_model_to_the_genome():
    sp = hard_space()
    levels = tying_levels(sp)
    assert sizes(levels) == [2, 6, 12, 24, 48]
    assert np.array_equal(levels[-1], np.arange(48))
    for assign in levels[:-1]:  # a tied gene only ties genes of one model and parameter
        for j in range(int(assign.max()) + 1):
            members = [sp.axes[i] for i in np.flatnonzero(assign == j)]
            assert len({(a.model, a.param) for a in members}) == 1
    # the 2-block level ties layers 0-3 and 4-7, never across that boundary
    two_blocks = levels[2]
    for j in range(12):
        layers = {sp.axes[i].layers[0] for i in np.flatnonzero(two_blocks == j)}
        assert layers <= set(range(4)) or layers <= set(range(4, 8))


def test_genomes_without_layer_structure_have_fewer_levels():
    one_group = GenomeConfig(models=["a", "b"], merge_method="linear")
    assert sizes(tying_levels(Genome(one_group, ["a", "b"], None, 8).space)) == [2]
    dataflow = dataclasses.replace(hard_space(), describe=lambda x: "a path")
    assert sizes(tying_levels(dataflow)) == [48]


def test_tied_space_labels_and_start():
    sp = hard_space()
    assign = tying_levels(sp)[0]
    sub = tied_space(sp, assign)
    assert sub.n_genes == 2
    assert [a.layers for a in sub.axes] == [(0, 8), (0, 8)]
    assert [a.filter for a in sub.axes] == [None, None]
    assert [a.model for a in sub.axes] == ["a", "b"]
    np.testing.assert_allclose(sub.initial, [0.5, 0.5])
    x = np.where([a.model == "a" for a in sp.axes], 0.2, 0.6)
    np.testing.assert_allclose(project(x, assign), [0.2, 0.6])


def test_first_level_ties_every_layer_and_filter_then_unties():
    sp = hard_space()
    s = make_strategy("ctf", sp, seed=0, population_size=6, generations_per_level=2)
    model_a = np.array([a.model == "a" for a in sp.axes])
    for _ in range(2):
        xs = s.ask()
        for x in xs:
            assert np.ptp(x[model_a]) == 0 and np.ptp(x[~model_a]) == 0
        s.tell(xs, [float(-np.sum((x - 0.9) ** 2)) for x in xs])
    assert [e["kind"] for e in s.drain_events()] == ["ctf_level"]
    xs = s.ask()  # level 1: one gene per model and filter
    assert any(np.ptp(x[model_a]) > 0 for x in xs)
    for x in xs:
        for flt in (None, "self_attn", "mlp"):
            genes = model_a & np.array([a.filter == flt for a in sp.axes])
            assert np.ptp(x[genes]) == 0


def test_next_level_starts_at_the_best_genotype_so_far():
    sp = hard_space()
    s = make_strategy("ctf", sp, seed=1, population_size=6, generations_per_level=1)
    xs = s.ask()
    scores = [float(-np.sum((x - 0.9) ** 2)) for x in xs]
    s.tell(xs, scores)
    best = xs[int(np.argmax(scores))]
    np.testing.assert_allclose(s.search_mean(), best)  # tied per model, so it is exact


@pytest.mark.parametrize("target", [0.9, 0.25])
@pytest.mark.parametrize(("tied", "untied"), [("ctf", "cma"), ("ctf-gp", "gp")])
def test_beats_its_search_in_the_whole_genome_when_layers_want_the_same_weight(
        target, tied, untied):
    """Where the optimum is one weight per model (as neighbouring layers of a fine-tune
    tend to want), 6 generations of 8 in tied levels get nearer to it than the same search
    (CMA-ES, optuna's GP) in all 48 genes."""
    sp = hard_space()

    def best_after(name):
        s = make_strategy(name, sp, seed=0, population_size=8)
        best = -np.inf
        for _ in range(6):
            xs = s.ask()
            scores = [float(-np.sum((x - target) ** 2)) for x in xs]
            best = max(best, *scores)
            s.tell(xs, scores)
        return best

    assert best_after(tied) > best_after(untied)
