"""The ask/tell contract every search strategy implements (cf. optuna's samplers).

A strategy is a pure object: it proposes genotypes and learns from their scores. It owns
no Ray, storage or logging; the search loop drains `events` (LLM transcripts, sigma choices,
restarts) after each call and records them. `state_dict()` must be JSON-serialisable so a
run can resume from storage.

Each strategy's constructor names exactly the options it uses (keyword-only, no catch-all),
and `from_config` picks those options, and nothing else, out of a run's config. Building
one reads no environment variable and opens no connection: whatever needs the outside
world (the LLM server's preflight) waits for `start()`, which the caller runs once, before
the first `ask`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from llm_evo.genome import SearchSpace

if TYPE_CHECKING:
    from typing import Self

    from llm_evo.config import RunConfig


def default_population_size(n_genes: int) -> int:
    """CMA-ES's rule, 4 + floor(3 ln n): small spaces get small, cheap generations."""
    return 4 + int(3 * math.log(max(n_genes, 1)))


class Strategy(ABC):
    """Proposes genotypes inside `space` and learns from their scores (higher is better)."""

    name: ClassVar[str] = "base"
    # Whether tell() can take one objective vector per candidate (search.objective: pareto)
    multi_objective: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, *, seed: int = 0,
                 population_size: int | None = None) -> None:
        self.space = space
        self.seed = seed
        self.population_size = population_size or default_population_size(space.n_genes)
        self.generation = 0
        self.events: list[dict[str, Any]] = []

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> Self:
        """This strategy built from a run's config, taking only its own options.

        `secrets` are what the command line resolved outside the config (an API key, a URL
        from the environment); strategies that need none ignore them. Subclasses with more
        options override this and name each one they take.
        """
        s = config.search
        return cls(space, seed=s.seed, population_size=s.population_size)

    def start(self) -> None:  # noqa: B027 (an optional hook, not an abstract one)
        """Checks that need the outside world, run once before the first `ask` (and before
        any worker starts, so a bad setting costs nothing). Nothing to check by default."""

    @abstractmethod
    def ask(self) -> list[np.ndarray]:
        """The next generation's genotypes, each inside the space's bounds (`space.clip`;
        genes mergekit-evolve leaves unbounded may leave [space.lower, space.upper])."""

    @abstractmethod
    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        """Scores for the genotypes of the last ask(); None marks a failed candidate.

        A `multi_objective` strategy's tell also takes `objectives=`: one vector per
        genotype (each task's score, higher is better) or None, when the run searches a
        Pareto front."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where this strategy stands (JSON-safe)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by state_dict()."""

    def on_stagnation(self, reason: str) -> None:
        """The population's kinship stayed high for generations (the kinship monitor).
        Strategies that can widen their search do it here; the default only records it."""
        self.emit("stagnation", reason=reason)

    def search_mean(self) -> np.ndarray | None:
        """The centre the current population is drawn around, if the strategy has one."""
        return None

    def emit(self, kind: str, **payload: Any) -> None:
        """Queue an event for the search loop to record (never logged here)."""
        self.events.append({"kind": kind, "generation": self.generation, **payload})

    def drain_events(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def fill_failed(scores: list[float | None]) -> np.ndarray:
    """Failed candidates score just below the worst success, so they lose every ranking."""
    valid = [s for s in scores if s is not None and math.isfinite(s)]
    floor = (min(valid) - 1.0) if valid else -1.0
    return np.array([s if s is not None and math.isfinite(s) else floor for s in scores])


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng
