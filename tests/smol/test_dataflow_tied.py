"""A data-flow merge of the real SmolLM2 fine-tunes, whose embeddings are tied: the merged
model stays tied (no separate head tensor), takes its embeddings from the model the path
starts with, loads in transformers and computes what its layers say."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from llm_evo.config import parse_config
from llm_evo.resolve import build_genome
from tests.cli.helpers import cli

pytestmark = pytest.mark.slow


def test_tied_embeddings_stay_tied_through_a_passthrough_path(smol, tmp_path):
    a, b = smol["models"]["ft_science"], smol["models"]["ft_society"]
    genome = build_genome(parse_config({
        "genome": {"models": [str(a), str(b)], "merge_method": "passthrough",
                   "dataflow": {"repeats": 1, "scale": False}},
        "tasks": ["x"]}))
    n = genome.num_layers
    x = np.full(genome.n_genes, -0.5)
    x[:n // 2] = 0.5  # ft_science's first half, then ft_society's second half
    x[n + n // 2:2 * n] = 0.5
    config = tmp_path / "path.yml"
    config.write_text(genome.to_yaml(x, "float32"))
    out = tmp_path / "merged"
    proc = cli("mergekit-yaml", str(config), str(out), "--lazy-unpickle", "--copy-tokenizer")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["num_hidden_layers"] == n
    got = {}
    for f in out.glob("*.safetensors"):
        got.update(load_file(str(f)))
    src_a, src_b = (load_file(str(next(p.glob("*.safetensors")))) for p in (a, b))
    assert "lm_head.weight" not in got  # tied: the head is the embedding matrix
    assert torch.equal(got["model.embed_tokens.weight"], src_a["model.embed_tokens.weight"])
    assert torch.equal(got["model.norm.weight"], src_b["model.norm.weight"])
    key = "self_attn.q_proj.weight"
    assert torch.equal(got[f"model.layers.{n - 1}.{key}"], src_b[f"model.layers.{n - 1}.{key}"])

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with torch.no_grad():
        logits = model(torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all() and logits.shape[-1] == cfg["vocab_size"]
