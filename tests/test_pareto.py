"""The Pareto math: the non-dominated filter against brute force, and objective vectors
(signed by the task weight, None when a task's metric is missing)."""

from __future__ import annotations

import numpy as np

from llm_evo.config import parse_config
from llm_evo.pareto import non_dominated, objective_keys, objective_vector


def brute_force(points: np.ndarray) -> list[int]:
    out = []
    for i, p in enumerate(points):
        beaten = any(np.all(q >= p) and np.any(q > p) for q in points)
        seen = any(np.array_equal(points[j], p) for j in range(i))
        if not beaten and not seen:
            out.append(i)
    return out


def test_non_dominated_matches_brute_force():
    rng = np.random.default_rng(0)
    for n, d in [(1, 2), (30, 2), (50, 3), (40, 5)]:
        pts = rng.integers(0, 6, size=(n, d)).astype(float)  # ties and duplicates included
        assert non_dominated(pts).tolist() == brute_force(pts)
    line = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0], [0.4, 0.4]])
    assert non_dominated(line).tolist() == [0, 1, 2]


def config(weights=(1.0, 1.0)):
    return parse_config({
        "genome": {"models": ["a", "b"], "merge_method": "linear"},
        "tasks": [{"name": "t", "weight": weights[0]}, {"name": "u", "weight": weights[1]}],
        "search": {"strategy": "nsga2", "objective": "pareto"}})


def test_objective_vector_signs_and_missing_values():
    keys = objective_keys(config((1.0, -0.5)))
    assert keys == [("t/acc,none", 1.0), ("u/acc,none", -1.0)]
    assert objective_vector({"t/acc,none": 0.7, "u/acc,none": 0.2}, keys) == [0.7, -0.2]
    assert objective_vector({"t/acc,none": 0.7}, keys) is None
    assert objective_vector(None, keys) is None
    assert objective_vector({"t/acc,none": float("nan"), "u/acc,none": 0.1}, keys) is None


