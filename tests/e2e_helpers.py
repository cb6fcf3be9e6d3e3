"""Small configs over the tiny family for end-to-end runs (real Ray, mergekit, lm-eval)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import yaml

FAMILY = ("ft_arith", "ft_category")
TASKS = ("tiny_skill_arith", "tiny_skill_category")


def family_dir(tiny_family: dict) -> Path:
    return Path(tiny_family["root"]) if "root" in tiny_family else (
        Path(__file__).resolve().parent.parent / "models" / "tiny")


def shipped_config(name: str, tiny_family: dict, out: Path, search: dict | None = None
                   ) -> Path:
    """configs/`name` (a tiny-family config) with the family's paths made absolute and
    `search` merged into its search section, written to `out`/`name`."""
    root = family_dir(tiny_family)
    cfg = yaml.safe_load((Path(__file__).resolve().parent.parent / "configs" / name)
                         .read_text())
    g = cfg["genome"]
    g["models"] = [str(root / Path(m).name) for m in g["models"]]
    g["base_model"] = str(root / "base")
    cfg["evaluation"]["task_search_path"] = [str(root / "tasks")]
    cfg["search"].update(search or {})
    path = out / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_config(tmp_path: Path, tiny_family: dict, *, method: str = "task_arithmetic",
                 strategy: str = "cma", population: int = 4, generations: int = 2,
                 limit: int | None = 40, extra: dict | None = None) -> Path:
    root = family_dir(tiny_family)
    cfg = {
        "genome": {
            "models": [str(root / m) for m in FAMILY],
            "merge_method": method,
            "base_model": str(root / "base"),
            "layer_granularity": 4,
            "normalize": False,
        },
        "tasks": list(TASKS),
        "limit": limit,
        "apply_chat_template": False,
        "fewshot_as_multiturn": False,
        "search": {"strategy": strategy, "population_size": population,
                   "max_generations": generations, "seed": 7},
        "evaluation": {"task_search_path": [str(root / "tasks")]},
    }
    for key, value in (extra or {}).items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def candidate_rows(storage: Path, columns: str) -> dict[tuple[int, int], tuple]:
    """`columns` of every candidate in a run's ledger, by (generation, idx), read with plain
    sqlite3 while the run may still be writing; {} before the ledger or its table exists."""
    if not (storage / "llm_evo.sqlite").is_file():
        return {}
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    try:
        got = db.execute(f"SELECT generation, idx, {columns} FROM candidates "
                         "WHERE kind='candidate'").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        db.close()
    return {(g, i): tuple(rest) for g, i, *rest in got}
