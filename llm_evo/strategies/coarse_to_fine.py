"""Coarse-to-fine CMA-ES: search the genome with its layers tied first, then untie them.

A layer-wise genome (`layer_granularity` 1 or 2, `filters`) has dozens of genes, and at the
budgets users pay for (30-100 evaluations) CMA-ES barely moves its mean in that many
dimensions. Yet neighbouring layers of one fine-tune want similar weights, so most of the
gain is in a few directions: each model's overall weight, then its weight per filter, then
per block of layers. This strategy runs pycma (our `CMAES`, so its resume guarantees hold)
in a sequence of tied spaces:

1. one gene per model (and merge parameter), shared by every layer group and filter;
2. one gene per model and filter;
3. blocks of 2, 4, ... layer groups, halving until every group has its own genes.

Each level starts at the best genotype found so far (averaged over the genes it ties) with
the step size the previous level ended with, and runs `generations_per_level` generations
before the next level takes over; the last level (the genome itself) runs until the end.
A genome without that structure (a data-flow genome, one layer group and no filters) has
one level, so this is plain CMA-ES there.

Why our own code and not a library: optuna and pycma search the space they are given; the
tying is about what a merge genome's genes mean (layers, filters, models), which only the
genome knows. The search in each level is pycma's.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.genome import Axis, SearchSpace
from llm_evo.strategies.base import Strategy
from llm_evo.strategies.cma_es import CMAES

if TYPE_CHECKING:
    from llm_evo.config import RunConfig

MIN_SIGMA = 0.05  # a level never starts with a step below this (it must be able to move)


def per_level_option(config: RunConfig) -> dict[str, int]:
    """`search.generations_per_level` as a keyword, or nothing when unset, so that each
    coarse-to-fine strategy keeps its own default."""
    n = config.search.generations_per_level
    return {} if n is None else {"generations_per_level": n}


def tying_levels(space: SearchSpace) -> list[np.ndarray]:
    """For each level, coarsest first: which tied gene each of the genome's genes reads.

    The last level is always the identity (every gene its own). Levels that tie nothing
    more than the next one are dropped.
    """
    n = space.n_genes
    identity = np.arange(n)
    if space.describe is not None or n == 0:  # a data-flow genome: its genes are not layers
        return [identity]
    groups = sorted({a.layer_group for a in space.axes})
    n_groups = len(groups)
    rank = {g: i for i, g in enumerate(groups)}

    def level(key) -> np.ndarray:
        ids: dict[Any, int] = {}
        return np.array([ids.setdefault(key(a), len(ids)) for a in space.axes])

    candidates = [level(lambda a: (a.model, a.param)),
                  level(lambda a: (a.model, a.filter, a.param))]
    blocks = 2
    while blocks < n_groups:
        candidates.append(level(lambda a, b=blocks: (rank[a.layer_group] * b // n_groups,
                                                     a.model, a.filter, a.param)))
        blocks *= 2
    levels: list[np.ndarray] = []
    for assign in candidates:
        size = int(assign.max()) + 1
        if size < n and (not levels or size > int(levels[-1].max()) + 1):
            levels.append(assign)
    levels.append(identity)
    return levels


def tied_space(space: SearchSpace, assign: np.ndarray) -> SearchSpace:
    """The space of a level's tied genes: each labelled by the first gene it stands for,
    spanning every layer it ties, with the mean start point of the genes it ties."""
    k = int(assign.max()) + 1
    axes: list[Axis] = []
    for j in range(k):
        members = np.flatnonzero(assign == j)
        first = space.axes[members[0]]
        lo = min(space.axes[i].layers[0] for i in members)
        hi = max(space.axes[i].layers[1] for i in members)
        same_filter = len({space.axes[i].filter for i in members}) == 1
        axes.append(dataclasses.replace(first, index=j, layers=(lo, hi),
                                        filter=first.filter if same_filter else None))
    lower = np.array([a.low for a in axes])
    upper = np.array([a.high for a in axes])
    return SearchSpace(tuple(axes), lower, upper, project(space.initial, assign))


def project(x: np.ndarray, assign: np.ndarray) -> np.ndarray:
    """A full genotype's tied genes: the mean of the genes each one ties."""
    k = int(assign.max()) + 1
    return np.bincount(assign, weights=np.asarray(x, float), minlength=k) / np.bincount(
        assign, minlength=k)


class TiedLevelSearch(Strategy):
    """What `ctf` and `ctf-gp` share: the levels, which one is searched, and when to move on.

    A subclass holds the current level's strategy as `inner` (asked and told in the level's
    tied genes), builds the next one in `_next_level`, and adds its own state."""

    def __init__(self, space: SearchSpace, *, seed: int, population_size: int | None,
                 generations_per_level: int) -> None:
        super().__init__(space, seed=seed, population_size=population_size)
        if generations_per_level < 1:
            raise ValueError("generations_per_level must be at least 1")
        self.generations_per_level = generations_per_level
        self.levels = tying_levels(space)
        self.level = 0
        self.level_generation = 0
        self.inner: Strategy

    def _expand(self, z: np.ndarray, level: int | None = None) -> np.ndarray:
        """A tied genotype of `level` (by default the current one) as the genome's."""
        assign = self.levels[self.level if level is None else level]
        return self.space.clip(np.asarray(z, float)[assign])

    def ask(self) -> list[np.ndarray]:
        return [self._expand(z) for z in self.inner.ask()]

    def _asked(self, genotypes: list[np.ndarray]) -> list[np.ndarray]:
        """The tied genotypes `genotypes` came from (the inner ask is idempotent)."""
        zs = self.inner.ask()
        if len(genotypes) != len(zs):
            raise ValueError("tell() must follow ask() with the same number of genotypes")
        return zs

    def _generation_told(self) -> None:
        self.generation += 1
        self.level_generation += 1
        last = self.level == len(self.levels) - 1
        if not last and self.level_generation >= self.generations_per_level:
            self.level += 1
            self.level_generation = 0
            self._next_level()

    @abstractmethod
    def _next_level(self) -> None:
        """Build `inner` for `self.level`, which has just been entered."""

    def _level_state(self) -> dict[str, Any]:
        return {"generation": self.generation, "seed": self.seed, "level": self.level,
                "level_generation": self.level_generation}

    def _load_level_state(self, state: dict[str, Any]) -> None:
        self.generation = state["generation"]
        self.seed = state["seed"]  # seeds the levels still to come
        self.level = state["level"]
        self.level_generation = state["level_generation"]


class CoarseToFineCMA(TiedLevelSearch):
    """pycma in tied spaces of the genome, coarsest first (see the module docstring)."""

    name = "ctf"

    def __init__(self, space: SearchSpace, *, seed: int = 0, population_size: int | None = None,
                 sigma0: float = 0.2, random_init: bool = False,
                 generations_per_level: int = 3) -> None:
        super().__init__(space, seed=seed, population_size=population_size,
                         generations_per_level=generations_per_level)
        self.sigma0 = sigma0
        self.random_init = random_init
        self.best_genotype: np.ndarray | None = None
        self.best_score = -math.inf
        self.inner = self._inner(0, space.initial, sigma0, random_init)

    @classmethod
    def from_config(cls, space: SearchSpace, config: RunConfig,
                    secrets: Mapping[str, str] | None = None) -> CoarseToFineCMA:
        s = config.search
        return cls(space, seed=s.seed, population_size=s.population_size, sigma0=s.sigma0,
                   random_init=config.random_init, **per_level_option(config))

    def _inner(self, level: int, start: np.ndarray, sigma: float,
               random_init: bool = False) -> CMAES:
        assign = self.levels[level]
        sub = tied_space(self.space, assign)
        sub = dataclasses.replace(sub, initial=sub.clip(project(start, assign)))
        # each level's pycma draws its own noise: seed it with the level
        return CMAES(sub, seed=self.seed * 1000 + level, population_size=self.population_size,
                     sigma0=sigma, random_init=random_init)

    def tell(self, genotypes: list[np.ndarray], scores: list[float | None]) -> None:
        zs = self._asked(genotypes)
        for x, s in zip(genotypes, scores, strict=True):
            if s is not None and math.isfinite(s) and s > self.best_score:
                self.best_score, self.best_genotype = float(s), np.asarray(x, float).copy()
        self.inner.tell(zs, scores)
        self._generation_told()

    def _next_level(self) -> None:
        sigma = max(float(self.inner.es.sigma), MIN_SIGMA)
        start = self.best_genotype if self.best_genotype is not None else self._expand(
            self.inner.search_mean(), self.level - 1)
        self.inner = self._inner(self.level, start, sigma)
        self.emit("ctf_level", level=self.level, genes=int(self.levels[self.level].max()) + 1,
                  sigma=sigma)

    def on_stagnation(self, reason: str) -> None:
        super().on_stagnation(reason)
        self.inner.restart(2.0, reason=reason)

    def drain_events(self) -> list[dict[str, Any]]:
        """Ours and the current level's pycma's (its restarts), in the run's generations."""
        inner = [{**e, "generation": self.generation} for e in self.inner.drain_events()]
        return super().drain_events() + inner

    def search_mean(self) -> np.ndarray:
        return self._expand(self.inner.search_mean())

    def state_dict(self) -> dict[str, Any]:
        return {**self._level_state(),
                "best_score": self.best_score if math.isfinite(self.best_score) else None,
                "best_genotype": (None if self.best_genotype is None
                                  else self.best_genotype.tolist()),
                "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_level_state(state)
        self.best_score = (-math.inf if state["best_score"] is None
                           else float(state["best_score"]))
        self.best_genotype = (None if state["best_genotype"] is None
                              else np.array(state["best_genotype"], float))
        self.inner = self._inner(self.level, self.space.initial, self.sigma0)
        self.inner.load_state_dict(state["inner"])
