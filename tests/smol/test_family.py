"""The SmolLM2 family is the real model and its fine-tunes learned their skills. (lm-eval's
CLI scoring the generated tasks as the builder did: tests/smol/test_search.py, on the best
merge.)"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.cli.helpers import cli

pytestmark = pytest.mark.slow


def test_base_is_the_dequantised_smollm2(smol):
    config = json.loads((smol["base"] / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30, 576, 49152)
    assert config["tie_word_embeddings"] is True
    assert "quantization_config" not in config  # loaders must not look for the GGUF
    with safe_open(str(smol["base"] / "model.safetensors"), framework="pt") as fh:
        names = set(fh.keys())
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
        n_params = sum(math.prod(fh.get_slice(n).get_shape()) for n in names)
    assert 134_000_000 < n_params < 135_000_000

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol["base"])
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_each_finetune_beats_the_base_by_ten_points_on_unseen_items(smol):
    family = smol["family"]
    scores = family["scores"]
    for name in smol["models"]:
        skill = family["models"][name]["skill"]
        assert scores[name][skill] >= scores["base"][skill] + 0.10, (name, scores)
    for skill, task in family["tasks"].items():
        evaluation = {json.loads(line)["text"] for line in Path(task["data"]).open()}
        train_file = Path(family["train_dir"]) / f"{task['name']}.jsonl"
        train = {json.loads(line)["text"] for line in train_file.open()}
        assert len(evaluation) == task["n"] == 200 and len(train) == task["n_train"] > 500
        assert not evaluation & train, skill


def test_a_second_build_is_instant_and_the_link_is_stable(smol, repo_root, tmp_path):
    out = tmp_path / "link"
    proc = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "make_smol_family.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seconds = float(re.search(r"\(([\d.]+) s; built", proc.stdout).group(1))
    assert seconds < 5 and out.resolve() == smol["root"].resolve()
    assert "| ft_science |" in proc.stdout


def test_shipped_smol_config_validates(smol, repo_root):
    proc = cli("llm-evo", "validate", "configs/smol.yml", cwd=repo_root)
    assert proc.returncode == 0, proc.stderr
    assert "layers: 30 in 3 group(s) of 10" in proc.stdout, proc.stdout
    assert "genes: 3 x 3 x 1 x 1 = 9" in proc.stdout, proc.stdout


def test_swapped_gguf_special_tokens_are_pinned_and_said(smol, capsys):
    """transformers 5.17 reads SmolLM2's GGUF EOS as <|im_start|> (seen on a GPU machine):
    the builder pins it back, pad with it, and says so."""
    from transformers import AutoTokenizer

    from tests.conftest import _load_script

    builder = _load_script("make_smol_family")
    tok = AutoTokenizer.from_pretrained(smol["base"])
    tok.eos_token = tok.pad_token = "<|im_start|>"
    builder._check_special_tokens(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert "eos_token read as '<|im_start|>'; pinned to '<|im_end|>'" in capsys.readouterr().err
    builder._check_special_tokens(tok)  # right tokens: nothing to say
    assert capsys.readouterr().err == ""


def test_finetune_batches_are_length_neighbours(smol):
    """A fine-tune batch is a window of the length-sorted items: it is padded far less than
    16 random items would be (the build's cost is its tokens)."""
    from transformers import AutoTokenizer

    from tests.conftest import _load_script

    builder = _load_script("make_smol_family")
    skills = builder._skills_module()
    tok = AutoTokenizer.from_pretrained(smol["base"])
    train_file = Path(smol["family"]["train_dir"]) / "smol_science.jsonl"
    items = [skills.Item(**json.loads(line)) for line in train_file.open()]
    ordered = builder.by_length(tok, items)
    lengths = [len(tok.encode(i.text)) for i in ordered]
    assert lengths == sorted(lengths) and len(ordered) == len(items)
    ids, mask, _ = builder._batch(tok, ordered[100:116], with_answer=True)
    assert mask.float().mean() > 0.9  # neighbours in length: little padding
