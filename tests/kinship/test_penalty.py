"""The kinship penalty on its own: the arithmetic, the diversity statistics and the cache of
the models' statistics (no ledger, no strategy)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_evo.config import KinshipConfig
from llm_evo.kinship.penalty import CACHE_FILE, build_penalty, excess
from tests.session.test_hooks import tiny_genome


def test_penalty_arithmetic_and_cache(tiny_family, tmp_path):
    genome = tiny_genome(tiny_family)
    config = KinshipConfig(metric="cs", penalty=2.0, threshold=0.9)
    penalty, facts = build_penalty(config, genome, tmp_path)
    assert not facts["cached"] and facts["exact"] and (tmp_path / CACHE_FILE).is_file()
    # One read of base + 2 models: the tensor bytes read never exceed the files' bytes.
    assert 0 < facts["bytes_read"] <= facts["file_bytes"] and facts["checkpoints_read"] == 3
    rng = np.random.default_rng(0)
    genotypes = [rng.uniform(0, 1, genome.n_genes) for _ in range(4)]
    elite = [rng.uniform(0, 1, genome.n_genes) for _ in range(2)]
    got = penalty.assess(genotypes, elite)
    matrix = penalty.model.matrix("cs", genotypes + elite)
    for i, k in enumerate(got.kinship):
        assert k == pytest.approx(matrix[i, 4:].mean(), abs=1e-12)
        assert penalty.penalised(0.7, k) == pytest.approx(0.7 - 2.0 * max(0.0, k - 0.9))
    pairs = matrix[:4, :4][np.triu_indices(4, 1)]
    assert got.diversity["mean"] == pytest.approx(pairs.mean())
    assert got.diversity["min"] == pytest.approx(pairs.min())
    # population: each candidate against the others, never itself
    pop = penalty.assess(genotypes, population=True)
    assert pop.kinship[0] == pytest.approx(np.delete(matrix[0, :4], 0).mean())
    # lambda = 0 switches the penalty off, whatever the kinship
    off, _ = build_penalty(config.model_copy(update={"penalty": 0.0}), genome, tmp_path)
    assert off.penalised(0.7, 0.999) == 0.7
    # ed is a distance: closeness (below the threshold) is what is penalised
    assert excess("ed", 3.0, 5.0) == 2.0 and excess("ed", 6.0, 5.0) == 0.0
    assert excess("cs", 0.95, 0.9) == pytest.approx(0.05) and excess("cs", None, 0.9) == 0.0
    # the second start loads the run's cache instead of reading the models again
    again, facts2 = build_penalty(config, genome, tmp_path)
    assert facts2["cached"]
    np.testing.assert_array_equal(again.model.matrix("cs", genotypes + elite), matrix)
