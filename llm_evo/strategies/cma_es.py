"""CMA-ES through the `cma` package, bounded to the genome's box."""

from __future__ import annotations

import base64
import pickle
from typing import Any

import numpy as np

from llm_evo.strategies.base import Strategy, fill_failed


class CMAES(Strategy):
    """pycma's ask/tell, minimising the negated score; starts at the uniform merge."""

    name = "cma"

    def __init__(self, space, *, sigma0: float = 0.2, **kwargs: Any) -> None:
        super().__init__(space, **kwargs)
        self.sigma0 = sigma0
        x0 = space.initial
        if self.options.get("random_init"):  # mergekit-evolve's `random_init: true`
            x0 = np.random.default_rng(self.seed).uniform(space.lower, space.upper)
        self.es = self._new_es(x0, sigma0)
        self._pending: list[np.ndarray] | None = None

    def _new_es(self, x0: np.ndarray, sigma0: float):
        import cma

        opts = {
            "popsize": self.population_size,
            "seed": self.seed + 1,  # pycma treats seed 0 as "random"
            "bounds": [self.space.lower.tolist(), self.space.upper.tolist()],
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        if self._pending is None:
            self._pending = [self.space.clip(x) for x in self.es.ask()]
        return [x.copy() for x in self._pending]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        if self._pending is None or len(genotypes) != len(self._pending):
            raise ValueError("tell() must follow ask() with the same number of genotypes")
        fitness = fill_failed(scores)
        self.es.tell([np.asarray(g, dtype=float) for g in genotypes], (-fitness).tolist())
        self._pending = None
        self.generation += 1

    def restart(self, sigma_factor: float = 2.0, reason: str = "") -> None:
        """Restart around the current mean with a larger step (used on stagnation)."""
        mean = self.space.clip(self.es.mean)
        sigma = min(self.es.sigma * sigma_factor, 0.5)
        self.es = self._new_es(mean, sigma)
        self._pending = None
        self.emit("cma_restart", sigma=sigma, reason=reason)

    def state_dict(self) -> dict[str, Any]:
        blob = pickle.dumps((self.es, self._pending))
        return {"generation": self.generation, "es": base64.b64encode(blob).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.es, self._pending = pickle.loads(base64.b64decode(state["es"]))
