"""A starting pool of four models of the tiny family: its two fine-tunes and two earlier
merges of them (task arithmetic at different weights), built once per session with mergekit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import _load_script
from tests.e2e_helpers import TASKS, family_dir

SEED_NAMES = ["ta_arith_1.0_cat_0.4", "ta_arith_0.4_cat_1.0"]


@pytest.fixture(scope="session")
def pool_models(tiny_family, tmp_path_factory) -> dict:
    root = family_dir(tiny_family)
    seeds = _load_script("make_pool_seeds").build_seeds(
        root, tmp_path_factory.mktemp("pool_seeds"), names=SEED_NAMES)
    return {"base": root / "base", "tasks": root / "tasks",
            "models": [root / "ft_arith", root / "ft_category", *seeds.values()]}


def write_pool_config(tmp_path: Path, pool_models: dict, **pool) -> Path:
    cfg = {
        "pool": {"models": [str(m) for m in pool_models["models"]],
                 "base_model": str(pool_models["base"]), "top_k": 3, "max_rounds": 12,
                 **pool},
        "tasks": list(TASKS),
        "limit": 20,
        "apply_chat_template": False,
        "fewshot_as_multiturn": False,
        "evaluation": {"task_search_path": [str(pool_models["tasks"])]},
    }
    path = tmp_path / "pool.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path
