"""Uniform random search: the baseline every other strategy must beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy, rng_from_state, rng_state

if TYPE_CHECKING:
    from llm_evo.config import RunConfig


class RandomSearch(Strategy):
    """Samples genotypes uniformly in the box; generation 0 includes the uniform merge."""

    name = "random"
    multi_objective = True  # it ignores scores, so any number of objectives will do

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int | None = None,
                 random_init: bool = False) -> None:
        super().__init__(space, seed=seed, population_size=population_size)
        self.random_init = random_init
        self.rng = np.random.default_rng(self.seed)
        self._pending: list[list[float]] | None = None

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> RandomSearch:
        s = config.search
        return cls(space, seed=s.seed, population_size=s.population_size,
                   random_init=config.random_init)

    def ask(self) -> list[np.ndarray]:
        if self._pending is None:
            lo, hi = self.space.lower, self.space.upper
            out = [self.rng.uniform(lo, hi) for _ in range(self.population_size)]
            if self.generation == 0 and not self.random_init:
                out[0] = self.space.initial.copy()
            self._pending = [x.tolist() for x in out]
        return [np.array(x) for x in self._pending]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None],
             objectives: list[list[float] | None] | None = None) -> None:
        self._pending = None
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "rng": rng_state(self.rng),
                "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.rng = rng_from_state(state["rng"])
        self._pending = state.get("pending")
