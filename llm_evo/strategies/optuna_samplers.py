"""optuna's samplers behind llm-evo's ask/tell contract: TPE, Gaussian process, NSGA-II.

At 30-100 evaluations a strategy that models the whole history (TPE, GP-based Bayesian
optimisation) can beat CMA-ES; NSGA-II and multi-objective TPE/GP search the trade-off
between tasks (`search.objective: pareto`). optuna implements all of them well and is
seeded and ask/tell already, so each strategy here is a thin wrapper over one
`optuna.Study` held in optuna's in-memory storage, with nothing of optuna's logic copied.

Genes are float parameters `g0..g{n-1}` over the space's box; generation 0 includes the
uniform merge (unless `random_init`), as every other strategy's does. A generation is
`population_size` trials asked together and told together; a failed candidate is a
failed trial, which optuna's samplers ignore.

Resuming: optuna's documented way to save a sampler is to pickle it (its RNG and caches
come with it). `state_dict()` pickles the sampler with the in-memory storage (every trial,
running ones included) as base64 inside the JSON state, so a run resumed from the "asked"
checkpoint tells the very trials it asked, and every later proposal is the same as an
uninterrupted run's. The state is the run's own file; it is never read from elsewhere.
"""

from __future__ import annotations

import base64
import io
import pickle
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy

if TYPE_CHECKING:
    from llm_evo.config import RunConfig

STUDY_NAME = "llm-evo"


_LOCK_TYPES = {type(threading.Lock()): threading.Lock, type(threading.RLock()): threading.RLock}


class _StatePickler(pickle.Pickler):
    """Pickles a sampler's locks as fresh locks: some optuna versions keep a
    `threading.Lock` on the sampler (NSGAIISampler in 5.1), which plain pickle refuses. A
    lock holds no search state, so the restored sampler proposes exactly the same."""

    def reducer_override(self, obj: Any) -> Any:
        make = _LOCK_TYPES.get(type(obj))
        return (make, ()) if make is not None else NotImplemented


def _quiet_optuna() -> Any:
    """optuna, imported on first use, logging warnings only (not a line per trial)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


class OptunaStrategy(Strategy):
    """One optuna study; subclasses only choose the sampler."""

    name = "optuna"
    multi_objective: ClassVar[bool] = True

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int | None = None,
                 random_init: bool = False, n_objectives: int = 1) -> None:
        super().__init__(space, seed=seed, population_size=population_size)
        if n_objectives < 1:
            raise ValueError(f"n_objectives must be at least 1, not {n_objectives}")
        self.random_init = random_init
        self.n_objectives = n_objectives
        self._study: Any = None  # built on first use: constructing stays free of optuna
        self._storage: Any = None
        self._pending: list[int] | None = None  # trial numbers of the last ask
        self._pending_x: list[list[float]] | None = None  # and their genotypes

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> OptunaStrategy:
        s = config.search
        n_objectives = len(config.tasks) if s.objective == "pareto" else 1
        return cls(space, seed=s.seed, population_size=s.population_size,
                   random_init=config.random_init, n_objectives=n_objectives)

    # ---- the sampler: the only thing subclasses choose -------------------------------------
    def make_sampler(self) -> Any:
        raise NotImplementedError

    # ---- optuna plumbing -------------------------------------------------------------------
    def _distributions(self) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        lo, hi = self.space.lower, self.space.upper
        return {f"g{i}": FloatDistribution(float(lo[i]), float(hi[i]))
                for i in range(self.space.n_genes)}

    def _get_study(self) -> Any:
        if self._study is None:
            optuna = _quiet_optuna()
            self._storage = optuna.storages.InMemoryStorage()
            self._study = optuna.create_study(
                storage=self._storage, sampler=self.make_sampler(),
                study_name=STUDY_NAME, directions=["maximize"] * self.n_objectives)
            if not self.random_init:
                self._study.enqueue_trial(
                    {f"g{i}": float(v) for i, v in enumerate(self.space.initial)})
        return self._study

    # ---- ask / tell ------------------------------------------------------------------------
    def ask(self) -> list[np.ndarray]:
        if self._pending is None:
            study, dists = self._get_study(), self._distributions()
            trials = [study.ask(dists) for _ in range(self.population_size)]
            self._pending = [t.number for t in trials]
            self._pending_x = [[t.params[f"g{i}"] for i in range(self.space.n_genes)]
                               for t in trials]
        return [np.array(x) for x in self._pending_x]

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None],
             objectives: list[list[float] | None] | None = None) -> None:
        from optuna.trial import TrialState

        if self._pending is None or len(genotypes) != len(self._pending):
            raise RuntimeError("tell() must answer the last ask(), one score per genotype")
        if self.n_objectives > 1:
            if objectives is None or len(objectives) != len(genotypes):
                raise ValueError(f"{self.name} searches {self.n_objectives} objectives: "
                                 "tell() needs one objective vector per genotype")
            values: list[Any] = list(objectives)
        else:
            values = list(scores)
        study = self._get_study()
        for number, value in zip(self._pending, values, strict=True):
            if value is None or not np.all(np.isfinite(np.asarray(value, dtype=float))):
                study.tell(number, state=TrialState.FAIL)
            elif self.n_objectives > 1:
                if len(value) != self.n_objectives:
                    raise ValueError(f"expected {self.n_objectives} objectives, got {len(value)}")
                study.tell(number, [float(v) for v in value])
            else:
                study.tell(number, float(value))
        self._pending = self._pending_x = None
        self.generation += 1

    def add_results(self, genotypes: list[np.ndarray], values: list[Any]) -> None:
        """Tell the study results it did not ask for (a finer level of `ctf-gp` starts
        from every evaluation of the coarser ones), as optuna's `add_trial` does: a score
        each, or an objective vector each when the study has several. Between generations
        only."""
        from optuna.trial import create_trial

        if self._pending is not None:
            raise RuntimeError("add_results() is for between generations, not after an ask()")
        study, dists = self._get_study(), self._distributions()
        for x, value in zip(genotypes, values, strict=True):
            vector = [float(v) for v in np.atleast_1d(value)]
            if len(vector) != self.n_objectives:
                raise ValueError(f"expected {self.n_objectives} objectives, got {len(vector)}")
            params = {f"g{i}": float(v) for i, v in enumerate(x)}
            study.add_trial(create_trial(params=params, distributions=dists, values=vector))

    # ---- resume ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        study = self._get_study()
        blob = _dumps((self._storage, study.sampler))
        return {"generation": self.generation, "pending": self._pending,
                "pending_x": self._pending_x,
                "n_objectives": self.n_objectives,
                "optuna": base64.b64encode(blob).decode("ascii")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("n_objectives", 1) != self.n_objectives:
            raise ValueError(f"the saved {self.name} state searches "
                             f"{state.get('n_objectives', 1)} objective(s), this run "
                             f"{self.n_objectives}")
        storage, sampler = pickle.loads(base64.b64decode(state["optuna"]))
        self._storage = storage
        self._study = _quiet_optuna().load_study(study_name=STUDY_NAME, storage=storage,
                                                 sampler=sampler)
        self.generation = state["generation"]
        self._pending, self._pending_x = state.get("pending"), state.get("pending_x")


class TPE(OptunaStrategy):
    """optuna's TPESampler (multivariate, with a constant liar for the trials a generation
    asks before any is told), random for the first generation."""

    name = "tpe"

    def make_sampler(self) -> Any:
        from optuna.samplers import TPESampler

        return TPESampler(seed=self.seed, n_startup_trials=self.population_size,
                          multivariate=True, constant_liar=True)


class GaussianProcess(OptunaStrategy):
    """optuna's GPSampler (GP Bayesian optimisation), random for the first generation."""

    name = "gp"

    def make_sampler(self) -> Any:
        from optuna.samplers import GPSampler

        return GPSampler(seed=self.seed, n_startup_trials=self.population_size)


class NSGA2(OptunaStrategy):
    """optuna's NSGAIISampler, one NSGA-II generation per llm-evo generation."""

    name = "nsga2"

    def make_sampler(self) -> Any:
        from optuna.samplers import NSGAIISampler

        return NSGAIISampler(seed=self.seed, population_size=self.population_size)
