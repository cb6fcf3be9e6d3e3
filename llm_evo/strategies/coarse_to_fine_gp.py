"""Coarse-to-fine Gaussian-process search: optuna's GP in tied spaces, keeping every result.

`ctf` (coarse_to_fine.py) showed that a layer-wise genome's first gains are in a few tied
directions (each model's overall weight, then its weight per filter), and `gp` that at
30-100 evaluations a model of the whole history beats CMA-ES in the genome itself. This
strategy does both: optuna's GPSampler searches the same sequence of tied spaces as `ctf`
(`tying_levels`), `generations_per_level` generations each (1 by default: with the history
carried, a level needs no more; bench/search_quality.py, docs/performance.md), and when it
moves to a finer level the new level's GP starts with every evaluation made so far.
Nothing is projected away: the levels refine each other (each level's blocks of layers
split the previous level's in two), so a genotype evaluated at a coarse level is exactly a
point of every finer one, and its score is told to the finer GP as it was measured.

The first level starts as `gp` does (the uniform merge, then random points until the GP
has a generation to fit); later levels need no random start. The GP proposals come from
`GaussianProcess` (optuna_samplers.py), so resume is optuna's pickled study, as there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.genome import SearchSpace
from llm_evo.strategies.coarse_to_fine import (
    TiedLevelSearch,
    per_level_option,
    project,
    tied_space,
)
from llm_evo.strategies.optuna_samplers import GaussianProcess

if TYPE_CHECKING:
    from llm_evo.config import RunConfig


class CoarseToFineGP(TiedLevelSearch):
    """optuna's GP in tied spaces of the genome, coarsest first, every result carried into
    the finer levels (see the module docstring)."""

    name = "ctf-gp"
    multi_objective = True  # optuna's GP searches a Pareto front (logEHVI) as well

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int | None = None,
                 random_init: bool = False, generations_per_level: int = 1,
                 n_objectives: int = 1) -> None:
        super().__init__(space, seed=seed, population_size=population_size,
                         generations_per_level=generations_per_level)
        self.random_init = random_init
        self.n_objectives = n_objectives
        # every finished evaluation: (genotype, what the GP was told: a score, an objective
        # vector, or None for a failure), what a finer level starts from
        self.history: list[tuple[list[float], Any]] = []
        self.inner: GaussianProcess = self._inner(0)

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> CoarseToFineGP:
        s = config.search
        return cls(space, seed=s.seed, population_size=s.population_size,
                   random_init=config.random_init,
                   n_objectives=len(config.tasks) if s.objective == "pareto" else 1,
                   **per_level_option(config))

    def _inner(self, level: int) -> GaussianProcess:
        """Level `level`'s GP (seeded with the level), without the history yet."""
        sub = tied_space(self.space, self.levels[level])
        # the first level starts where `gp` does; later ones from the history alone
        return GaussianProcess(sub, seed=self.seed * 1000 + level,
                               population_size=self.population_size,
                               random_init=self.random_init or level > 0,
                               n_objectives=self.n_objectives)

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None],
             objectives: list[list[float] | None] | None = None) -> None:
        zs = self._asked(genotypes)
        self.inner.tell(zs, scores, objectives=objectives)  # it checks the objectives
        values = objectives if self.n_objectives > 1 else scores
        for x, value in zip(genotypes, values, strict=True):
            ok = value is not None and bool(np.all(np.isfinite(np.asarray(value, float))))
            told = np.asarray(value, float).tolist() if ok else None
            self.history.append(([float(v) for v in x], told))
        self._generation_told()

    def _next_level(self) -> None:
        self.inner = self._inner(self.level)
        assign = self.levels[self.level]
        sub = self.inner.space
        told = [(sub.clip(project(np.array(x), assign)), s) for x, s in self.history
                if s is not None]
        self.inner.add_results([z for z, _ in told], [s for _, s in told])
        self.emit("ctf_level", level=self.level, genes=int(assign.max()) + 1,
                  carried=len(told))

    def state_dict(self) -> dict[str, Any]:
        return {**self._level_state(), "history": [[x, s] for x, s in self.history],
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_level_state(state)
        self.history = [(list(x), s) for x, s in state["history"]]
        self.inner = self._inner(self.level)
        self.inner.load_state_dict(state["inner"])  # its study holds the carried results
