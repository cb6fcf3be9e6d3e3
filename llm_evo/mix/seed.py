"""`search.init: data`: start a search where `llm-evo mix --example-data` would mix.

Each model's weight gene is set to its data-driven weight in every layer group and filter
set; other genes (density) keep their defaults. Every strategy starts from
`space.initial` (CMA-ES's mean, random search's first candidate, the LLM strategy's first
centre), so replacing it is all the seeding there is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.genome import Genome, SearchSpace, resolve_path
from llm_evo.mix.weights import MixWeights


def initial_genotype(genome: Genome, weights: Sequence[float]) -> np.ndarray:
    """The genome's start point with model m's weight genes set to weights[m]."""
    if "weight" not in genome.params or genome.is_slerp:
        raise ConfigError(f"search.init: data sets merge weights; "
                          f"{genome.definition.merge_method} has none")
    if len(weights) != len(genome.models):
        raise ConfigError(f"search.init: {len(weights)} weight(s) for "
                          f"{len(genome.models)} model(s)")
    x4 = genome.space.initial.reshape(genome.shape).copy()
    x4[:, :, :, genome.params.index("weight")] = np.asarray(weights, dtype=float)[None, :, None]
    return genome.space.clip(x4.reshape(-1))


def seeded_space(genome: Genome, weights: Sequence[float]) -> SearchSpace:
    """The genome's search space, starting at the data-driven weights."""
    return dataclasses.replace(genome.space, initial=initial_genotype(genome, weights))


def search_init_weights(genome: Genome, example_data: str, temperature: float,
                        config_dir: Path | None = None, device: str = "cpu") -> MixWeights:
    """softmax(-loss / T) of each of the genome's models on the run's example data."""
    from llm_evo.mix.weights import data_weights

    path = resolve_path(example_data, config_dir)
    if not Path(path).is_file():
        raise ConfigError(f"search.example_data: {example_data}: file not found")
    return data_weights(genome.models, path, temperature=temperature, device=device)
