"""CMA-ES through the `cma` package, kept inside the genome's box by clipping.

A resumed run must be bit-identical to an uninterrupted one, in a fresh process. Three
things in pycma stood in the way:

- pycma files each sample it hands out in an archive keyed by `hash(x.tobytes())`. Python
  salts that hash per process, so after a restore `tell` finds none of the samples of the
  generation in flight, treats them as foreign and "repairs" every one that lies beyond a
  Mahalanobis radius (shrinks it towards the mean), which the uninterrupted run, finding
  them, never does: the covariance update then differs by rounding (1e-12), or by far more
  when a repaired sample is among the selected. We tell with `check_points=False`, so no
  sample is repaired in either process, which is exactly what the uninterrupted run did.
  Likewise we sample without pycma's bounds (its transform also goes through that archive),
  evaluate the clipped point and tell pycma its own raw sample.
- pycma samples from NumPy's global RNG by default; a private, seeded RandomState passed as
  its `randn` option travels inside the pickled strategy instead.
- Its linear algebra runs on the process's BLAS, whose summation order depends on the
  number of BLAS threads once the genome has a few hundred genes. Every pycma call runs
  under a one-thread BLAS limit, so a resume with other OMP/OPENBLAS settings or on a
  machine with more cores proposes the same genotypes.

- With a population under 6, pycma injects one mirrored sample into the next generation and
  recognises it at `tell` by looking it up in another of those archives. After a restore
  the lookup misses, the mirror counts as an ordinary sample, and the step-size update
  differs (by 1e-3 in our test). `load_state_dict` re-keys every archive of the restored
  pycma object with this process's hash, from the arrays pycma keeps next to each key.

What remains machine-dependent is the BLAS kernel itself: OpenBLAS picks it by CPU (or
OPENBLAS_CORETYPE), and an AVX2 kernel rounds differently from an AVX-512 one. So a resume
is bit-identical with the same NumPy build on the same kind of CPU; on another kind, the
genotypes that follow can differ in their last digits (1e-15 to 1e-10 in our measurements).
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy, fill_failed

if TYPE_CHECKING:
    from llm_evo.config import RunConfig


def one_blas_thread() -> AbstractContextManager:
    """A context in which BLAS uses one thread, so pycma's results do not depend on the
    thread count (which OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and the core count set)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


class CMAES(Strategy):
    """pycma's ask/tell, minimising the negated score; starts at the uniform merge."""

    name = "cma"

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int | None = None,
                 sigma0: float = 0.2, random_init: bool = False) -> None:
        super().__init__(space, seed=seed, population_size=population_size)
        self.sigma0 = sigma0
        self.random_init = random_init
        x0 = space.initial
        if random_init:  # mergekit-evolve's `random_init: true`
            x0 = np.random.default_rng(self.seed).uniform(space.lower, space.upper)
        self._raw: list[np.ndarray] | None = None  # pycma's samples, before clipping
        self.restarts = 0  # seeds each restart's noise, so it is part of the state
        self.es = self._new_es(x0, sigma0)

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> CMAES:
        s = config.search
        return cls(space, seed=s.seed, population_size=s.population_size, sigma0=s.sigma0,
                   random_init=config.random_init)

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
        with one_blas_thread():
            return cma.CMAEvolutionStrategy(np.asarray(x0, dtype=float), sigma0, opts)

    def ask(self) -> list[np.ndarray]:
        if self._raw is None:
            with one_blas_thread():
                self._raw = [np.asarray(x, dtype=float) for x in self.es.ask()]
        return [self.space.clip(x) for x in self._raw]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        if self._raw is None or len(genotypes) != len(self._raw):
            raise ValueError("tell() must follow ask() with the same number of genotypes")
        fitness = fill_failed(scores)
        with one_blas_thread():  # check_points=False: never repair our own samples (above)
            self.es.tell(self._raw, (-fitness).tolist(), check_points=False)
        self._raw = None
        self.generation += 1

    def restart(self, sigma_factor: float = 2.0, reason: str = "") -> None:
        """Restart around the current mean with a larger step (used on stagnation)."""
        mean = self.space.clip(self.es.mean)
        sigma = min(self.es.sigma * sigma_factor, 0.5)
        self.restarts += 1
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
        return {"generation": self.generation, "restarts": self.restarts,
                "es": base64.b64encode(blob).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.restarts = state.get("restarts", 0)  # older checkpoints lack it
        self.es, self._raw = pickle.loads(base64.b64decode(state["es"]))
        rekey_archives(self.es)


def rekey_archives(es: Any) -> None:
    """Re-key pycma's solution archives (`SolutionDict`: keys are `hash(x.tobytes())`,
    salted per process) for this process, from the arrays each one keeps beside its keys.

    Touches `SolutionDict`'s `data`, `data_with_same_key` and `_unhashed_keys` (pycma 4.x;
    tests/strategies/test_cma_resume_exact.py's "mirrors" case fails if they change); an
    archive without them is left as it is."""
    try:
        from cma.utilities.utils import SolutionDict
    except ImportError:  # another pycma layout: nothing we know how to re-key
        return
    owners = [es, getattr(es, "gp", None)]
    archives = {id(a): a for o in owners if o is not None for a in vars(o).values()
                if isinstance(a, SolutionDict)}
    for archive in archives.values():
        if not all(hasattr(archive, k) for k in ("data", "data_with_same_key",
                                                 "_unhashed_keys")):
            continue
        arrays = archive._unhashed_keys
        new = {old: (archive.key(arrays[old]) if old in arrays else old)
               for old in archive.data}
        archive.data = {new[k]: v for k, v in archive.data.items()}
        archive.data_with_same_key = {new.get(k, k): v
                                      for k, v in archive.data_with_same_key.items()}
        archive._unhashed_keys = {new.get(k, k): x for k, x in arrays.items()}
