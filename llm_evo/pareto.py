"""Pareto fronts over tasks (`search.objective: pareto`): objective vectors and the
non-dominated filter, pure functions that the search loop, its hook and the report share.

Each candidate's objective vector is its per-task metric values (a task with a negative
weight, a lower-is-better metric, counts negated, so every objective is maximised). The
non-dominated filter is a few lines of NumPy over at most a few thousand candidates;
optuna's own (`optuna.study._multi_objective`) is private API, so we do not import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from llm_evo.config import RunConfig
    from llm_evo.storage import CandidateRecord


def objective_keys(config: RunConfig) -> list[tuple[str, float]]:
    """(results key, sign) per task: the key the ledger stores its metric under."""
    return [(f"{t.name}/{t.metric}", -1.0 if t.weight < 0 else 1.0) for t in config.tasks]


def objective_vector(results: dict[str, Any] | None,
                     keys: Sequence[tuple[str, float]]) -> list[float] | None:
    """One value per task, higher is better; None when any is missing (a failed run)."""
    if not results:
        return None
    try:
        values = [sign * float(results[key]) for key, sign in keys]
    except (KeyError, TypeError, ValueError):
        return None
    return values if all(np.isfinite(values)) else None


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Indices of the rows no other row dominates (>= everywhere, > somewhere); of equal
    rows, the first is kept."""
    points = np.asarray(points, dtype=float)
    keep = []
    for i, p in enumerate(points):
        ge = np.all(points >= p, axis=1)
        gt = np.any(points > p, axis=1)
        dominated = np.any(ge & gt)
        duplicate = np.any(np.all(points[:i] == p, axis=1)) if i else False
        if not dominated and not duplicate:
            keep.append(i)
    return np.array(keep, dtype=int)


def front_of(candidates: Sequence[CandidateRecord], keys: Sequence[tuple[str, float]]
             ) -> list[CandidateRecord]:
    """The non-dominated successful merge candidates (parents excluded)."""
    pool = [(c, objective_vector(c.results, keys)) for c in candidates
            if c.kind == "candidate" and c.status == "ok"]
    pool = [(c, v) for c, v in pool if v is not None]
    if not pool:
        return []
    idx = non_dominated(np.array([v for _, v in pool]))
    return [pool[i][0] for i in idx]


