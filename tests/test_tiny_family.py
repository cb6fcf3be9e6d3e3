"""The tiny model family (scripts/make_tiny_family.py): layout, loading, tasks, cache.

Everything the demo and the end-to-end tests assume about models/tiny is checked here,
cheaply; the accuracy properties (experts and the winning merge) are measured by
scripts/check_tiny_family.py, which needs a few more seconds of lm-eval and mergekit.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def builder() -> ModuleType:
    name = "_tiny_family_builder"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "make_tiny_family.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def root(tiny_family: dict) -> Path:
    return Path(tiny_family["root"])


def test_family_json_describes_the_layout(tiny_family: dict, root: Path, builder) -> None:
    assert json.loads((root / "family.json").read_text()) == tiny_family
    assert tiny_family["fingerprint"] == builder.fingerprint()
    assert tiny_family["base"] == "base"
    assert tiny_family["finetunes"] == ["ft_arith", "ft_category"]
    assert tiny_family["task_names"] == ["tiny_skill_arith", "tiny_skill_category"]
    assert set(tiny_family["models"]) == {"base", "ft_arith", "ft_category"}
    for name, info in tiny_family["models"].items():
        assert Path(info["path"]) == root / name == root / info["dir"]
        for file in MODEL_FILES:
            assert (Path(info["path"]) / file).is_file(), (name, file)
    for skill, task in tiny_family["tasks"].items():
        assert task["expert"] == f"ft_{skill}"
        assert Path(task["yaml"]).is_file() and Path(task["data"]).is_file()
        assert Path(task["yaml"]).parent == Path(tiny_family["tasks_dir"]) == root / "tasks"
        assert str(Path(task["data"]).resolve()) in Path(task["yaml"]).read_text()


def test_cached_build_is_reused(tiny_family: dict, root: Path, builder) -> None:
    started = time.perf_counter()
    assert builder.build_family(root) == tiny_family
    assert time.perf_counter() - started < 1.0


def test_models_load_offline_as_small_untied_llamas(tiny_family: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    states = {}
    for name, info in tiny_family["models"].items():
        tok = AutoTokenizer.from_pretrained(info["path"])
        model = AutoModelForCausalLM.from_pretrained(info["path"], dtype=torch.float32)
        cfg = model.config
        assert type(model).__name__ == "LlamaForCausalLM"
        assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (8, 128, 4)
        assert cfg.tie_word_embeddings is False
        assert {tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token} == {
            "<s>", "</s>", "<unk>", "<pad>"}
        ids = tok("the dog sees 3 4 5 , qqq : gem").input_ids
        assert ids[0] == tok.bos_token_id and tok.unk_token_id in ids  # "qqq" is no word
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits
        assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
        states[name] = model.state_dict()
    for ft in tiny_family["finetunes"]:
        delta = sum(float((states[ft][k] - v).norm() ** 2) for k, v in states["base"].items())
        ref = sum(float(v.norm() ** 2) for v in states["base"].values())
        assert 0.0 < (delta / ref) ** 0.5 < 0.5, ft  # a real but small task vector


def _accuracy(model_dir: str, data: Path, n: int = 64) -> float:
    """Argmax over single-token choices, like lm-eval's acc, on the first n questions."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    docs = [json.loads(line) for line in data.read_text().splitlines()[:n]]
    hits = 0
    with torch.no_grad():
        for doc in docs:
            ids = tok(doc["context"]).input_ids
            logits = model(torch.tensor([ids])).logits[0, -1]
            choice_ids = tok.convert_tokens_to_ids(doc["choices"])
            hits += int(int(torch.argmax(logits[choice_ids])) == doc["gold"])
    return hits / len(docs)


def test_each_expert_knows_its_skill_and_the_base_does_not(tiny_family: dict) -> None:
    for task in tiny_family["tasks"].values():
        data = Path(task["data"])
        expert = _accuracy(tiny_family["models"][task["expert"]]["path"], data)
        base = _accuracy(tiny_family["models"]["base"]["path"], data)
        assert expert >= 0.8 and base <= 0.5, (task["name"], expert, base)


def test_task_yamls_resolve_through_task_manager(tiny_family: dict) -> None:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=tiny_family["tasks_dir"], include_defaults=False)
    assert set(tiny_family["task_names"]) <= set(manager.all_tasks)
    tasks = manager.load(tiny_family["task_names"])["tasks"]
    for name in tiny_family["task_names"]:
        task = tasks[name]
        assert task.OUTPUT_TYPE == "multiple_choice"
        docs = list(task.test_docs())
        assert len(docs) == tiny_family["tasks"][name.removeprefix("tiny_skill_")]["n_test"]
        assert 100 <= len(docs) <= 200
        doc = docs[0]
        assert len(task.doc_to_choice(doc)) == 4 and 0 <= task.doc_to_target(doc) < 4
        assert task.doc_to_text(doc) == doc["context"]


def test_task_text_is_held_out_from_training(tiny_family: dict, builder) -> None:
    """Test questions come from the training distribution but are never training strings."""
    import random

    seed = builder.PARAMS["seed"]
    for skill in builder.tiny_skills.make_skills(random.Random(seed), builder.PARAMS["skills"]):
        train, test = builder.tiny_skills.split_examples(
            skill, random.Random(f"{seed}-{skill.name}-data"),
            builder.PARAMS["n_train_examples"], builder.PARAMS["n_test"])
        data = Path(tiny_family["tasks"][skill.name]["data"])
        stored = [json.loads(line) for line in data.read_text().splitlines()]
        assert [d["context"] for d in stored] == [ex.context for ex in test]
        assert not {ex.text for ex in test} & {ex.text for ex in train}


def test_a_copied_family_is_repointed_without_a_rebuild(tiny_family: dict, root: Path,
                                                        tmp_path: Path, builder) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(root, copy)
    started = time.perf_counter()
    moved = builder.build_family(copy)
    assert time.perf_counter() - started < 5.0
    assert moved["fingerprint"] == tiny_family["fingerprint"] and moved["root"] == str(copy)
    for task in moved["tasks"].values():
        assert str(copy) in Path(task["yaml"]).read_text()
        assert Path(task["data"]).is_relative_to(copy)
    assert Path(moved["models"]["base"]["path"]) == copy / "base"
    # the original is untouched
    assert str(root) in Path(tiny_family["tasks"]["arith"]["yaml"]).read_text()
