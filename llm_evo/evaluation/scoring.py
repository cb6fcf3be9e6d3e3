"""Turning lm-eval's results into one fitness number, as mergekit-evolve does."""

from __future__ import annotations

import math
from typing import Any

from llm_evo.evaluation.jobs import TaskSpec


class ScoringError(RuntimeError):
    pass


def weighted_score(results: dict[str, dict[str, Any]],
                   tasks: tuple[TaskSpec, ...]) -> tuple[float, dict[str, float]]:
    """Σ weight·metric over tasks, plus the per-task metric values used."""
    per_task: dict[str, float] = {}
    total = 0.0
    for task in tasks:
        task_results = results.get(task.name)
        if task_results is None:
            raise ScoringError(f"lm-eval returned no results for task {task.name}")
        if task.metric not in task_results:
            have = ", ".join(k for k in task_results if "," in k and "stderr" not in k)
            raise ScoringError(f"task {task.name} has no metric {task.metric!r} (has: {have})")
        value = float(task_results[task.metric])
        if not math.isfinite(value):
            raise ScoringError(f"task {task.name} metric {task.metric} is {value}")
        per_task[f"{task.name}/{task.metric}"] = value
        total += task.weight * value
    return total, per_task
