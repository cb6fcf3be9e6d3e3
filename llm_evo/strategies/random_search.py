"""Uniform random search: the baseline every other strategy must beat."""

from __future__ import annotations

from typing import Any

import numpy as np

from llm_evo.strategies.base import Strategy, rng_from_state, rng_state


class RandomSearch(Strategy):
    """Samples genotypes uniformly in the box; generation 0 includes the uniform merge."""

    name = "random"

    def __init__(self, space, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.rng = np.random.default_rng(self.seed)
        self._pending: list[list[float]] | None = None

    def ask(self) -> list[np.ndarray]:
        if self._pending is None:
            lo, hi = self.space.lower, self.space.upper
            out = [self.rng.uniform(lo, hi) for _ in range(self.population_size)]
            if self.generation == 0 and not self.options.get("random_init"):
                out[0] = self.space.initial.copy()
            self._pending = [x.tolist() for x in out]
        return [np.array(x) for x in self._pending]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        self._pending = None
        self.generation += 1

    def state_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "rng": rng_state(self.rng),
                "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.rng = rng_from_state(state["rng"])
        self._pending = state.get("pending")
