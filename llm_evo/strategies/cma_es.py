"""CMA-ES through the `cma` package, kept inside the genome's box by clipping.

pycma's own bound handling maps samples through a transform and finds each sample's
genotype again at `tell` time in an archive keyed by `hash(x.tobytes())`. Python salts
that hash per process, so after a resume the lookup misses and the genotype is rebuilt
with ~1e-12 error, and the run drifts from the uninterrupted one. So we sample without
pycma's bounds, evaluate the clipped point, and tell pycma its own raw sample: a lookup
miss then costs nothing. pycma also samples from NumPy's global RNG by default; we give
it a private, seeded RandomState through its `randn` option instead, so the RNG travels
inside the pickled strategy. Together, a resumed run is bit-identical to an
uninterrupted one, in any process.
"""

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
        self._raw: list[np.ndarray] | None = None  # pycma's samples, before clipping
        self.es = self._new_es(x0, sigma0)

    def _new_es(self, x0: np.ndarray, sigma0: float, restart: int = 0):
        import cma

        rng = np.random.RandomState([self.seed, restart])  # a restart draws fresh noise
        opts = {
            "popsize": self.population_size,
            "randn": rng.randn,
            "verbose": -9,
            "verb_disp": 0,
            "verb_log": 0,
        }
        return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        if self._raw is None:
            self._raw = [np.asarray(x, dtype=float) for x in self.es.ask()]
        return [self.space.clip(x) for x in self._raw]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        if self._raw is None or len(genotypes) != len(self._raw):
            raise ValueError("tell() must follow ask() with the same number of genotypes")
        fitness = fill_failed(scores)
        self.es.tell(self._raw, (-fitness).tolist())
        self._raw = None
        self.generation += 1

    def restart(self, sigma_factor: float = 2.0, reason: str = "") -> None:
        """Restart around the current mean with a larger step (used on stagnation)."""
        mean = self.space.clip(self.es.mean)
        sigma = min(self.es.sigma * sigma_factor, 0.5)
        self.restarts = getattr(self, "restarts", 0) + 1
        self.es = self._new_es(mean, sigma, restart=self.restarts)
        self._raw = None
        self.emit("cma_restart", sigma=sigma, reason=reason)

    def on_stagnation(self, reason: str) -> None:
        super().on_stagnation(reason)
        self.restart(2.0, reason=reason)

    def search_mean(self) -> np.ndarray:
        return self.space.clip(self.es.mean)

    def state_dict(self) -> dict[str, Any]:
        blob = pickle.dumps((self.es, self._raw))
        return {"generation": self.generation, "es": base64.b64encode(blob).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.es, self._raw = pickle.loads(base64.b64decode(state["es"]))
