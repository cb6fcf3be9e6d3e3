"""The real SmolLM2-135M family (tests/conftest.py's smol_family) and small run configs on it.

Evaluations use `limit` items per task: the task files are shuffled with a seed, so the
first N items are a seeded random subset of the 200 held-out ones.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

FINETUNES = ("ft_science", "ft_society", "ft_health")


@pytest.fixture(scope="session")
def smol(smol_family: dict) -> dict:
    root = Path(smol_family["root"])
    return {
        "root": root,
        "base": root / "base",
        "models": {name: root / name for name in FINETUNES},
        "tasks": [t["name"] for t in smol_family["tasks"].values()],
        "tasks_dir": root / "tasks",
        "family": smol_family,
    }


def write_smol_config(tmp_path: Path, smol: dict, *, population: int = 2,
                      generations: int = 1, limit: int = 16, extra: dict | None = None) -> Path:
    cfg = {
        "genome": {
            "models": [str(p) for p in smol["models"].values()],
            "merge_method": "task_arithmetic",
            "base_model": str(smol["base"]),
            "layer_granularity": 10,
            "normalize": False,
        },
        "tasks": smol["tasks"],
        "limit": limit,
        "apply_chat_template": False,
        "fewshot_as_multiturn": False,
        "search": {"strategy": "cma", "population_size": population,
                   "max_generations": generations, "seed": 3},
        "evaluation": {"task_search_path": [str(smol["tasks_dir"])], "dtype": "float32",
                       "batch_size": 16},
    }
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "smol.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path
