"""The data-flow genome (llm_evo/dataflow.py): genotype -> path -> mergekit passthrough
config, merged for real by mergekit-yaml on the tiny family."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from llm_evo.config import parse_config
from llm_evo.dataflow import MAX_SLOTS, DataFlowGenome
from llm_evo.errors import ConfigError, InvalidGenotypeError
from llm_evo.resolve import build_genome
from tests.cli.helpers import cli
from tests.e2e_helpers import family_dir

ARITH, CATEGORY = 0, 1


def dataflow_config(tiny_family: dict, **flow) -> dict:
    root = family_dir(tiny_family)
    return {"genome": {"models": [str(root / "ft_arith"), str(root / "ft_category")],
                       "merge_method": "passthrough", "dataflow": flow},
            "tasks": ["tiny_skill_arith"]}


def genome_of(tiny_family: dict, **flow) -> DataFlowGenome:
    return build_genome(parse_config(dataflow_config(tiny_family, **flow)))


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def merged(genome: DataFlowGenome, genotype: np.ndarray, tmp_path: Path, name: str) -> Path:
    config = tmp_path / f"{name}.yml"
    config.write_text(genome.to_yaml(genotype, "float32"))
    out = tmp_path / name
    proc = cli("mergekit-yaml", str(config), str(out), "--lazy-unpickle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def with_use(genome: DataFlowGenome, used: list[tuple[int, int, int]],
             scales: tuple[float, ...] = ()) -> np.ndarray:
    """A genotype whose path is `used`, a list of (repeat, model, layer) in path order."""
    x = np.full(genome.n_genes, -0.5)
    for t, slot in enumerate(genome.slots):
        if (slot.repeat, slot.model, slot.layer) in used:
            x[t] = 0.5
    x[len(genome.slots):] = scales or [1.0] * len(genome.pairs)
    return x


def test_the_axes_and_the_start_point(tiny_family):
    g = genome_of(tiny_family, repeats=2)
    n = g.num_layers
    assert len(g.slots) == 2 * 2 * n and g.n_genes == 4 * n + 2
    assert g.max_layers == 2 * n
    # slot order: repeat-major, then model, then layer
    assert [(s.repeat, s.model, s.layer) for s in g.slots[n - 1:n + 1]] == [(0, 0, n - 1),
                                                                          (0, 1, 0)]
    # the search starts at the first model's own path, every scale 1
    assert [s.model for s, _ in g.path(g.space.initial)] == [ARITH] * n
    assert g.space.axes[0].label == "slot 0: ft_arith layer 0 / use"
    assert g.space.axes[-1].label == "scale ft_category->ft_arith"


def test_one_models_layers_in_order_is_that_model_bit_for_bit(tiny_family, tmp_path):
    g = genome_of(tiny_family)
    out = merged(g, g.parent_genotype(CATEGORY), tmp_path, "category")
    want = tensors(family_dir(tiny_family) / "ft_category")
    got = tensors(out)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_repeated_block_gives_the_expected_layer_count(tiny_family, tmp_path):
    g = genome_of(tiny_family, repeats=2)
    n = g.num_layers
    # all of ft_arith, then its layers 2..5 again (repeat 2): n + 4 layers
    used = [(0, ARITH, i) for i in range(n)] + [(1, ARITH, i) for i in range(2, 6)]
    x = with_use(g, used)
    cfg = g.merge_config_dict(x, "float32")
    stacked = [s["sources"][0]["layer_range"] for s in cfg["slices"]]
    assert sum(b - a for a, b in stacked) == n + 4
    assert stacked[0][0] == stacked[0][1] and stacked[-1][0] == stacked[-1][1]  # edges
    out = merged(g, x, tmp_path, "repeat")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == n + 4
    src, got = tensors(family_dir(tiny_family) / "ft_arith"), tensors(out)
    for pos, layer in enumerate([*range(n), *range(2, 6)]):
        key = "mlp.down_proj.weight"
        assert torch.equal(got[f"model.layers.{pos}.{key}"], src[f"model.layers.{layer}.{key}"])


def test_a_model_switch_scales_the_entering_layers_input_norm_exactly(tiny_family, tmp_path):
    """Where it claims exactness: the entering layer's input_layernorm is the scale times
    the source's (float32, the same multiply mergekit does), every other tensor is the
    source's bit for bit, the layer before the switch is unscaled."""
    g = genome_of(tiny_family, repeats=1)
    used = [(0, ARITH, 0), (0, ARITH, 1), (0, CATEGORY, 2), (0, CATEGORY, 3)]
    scale = 0.8125  # arith -> category: the first scale gene
    x = with_use(g, used, (scale, 1.25))
    assert [round(s, 4) for _, s in g.path(x)] == [1.0, 1.0, scale, 1.0]
    got = tensors(merged(g, x, tmp_path, "switch"))
    root = family_dir(tiny_family)
    arith, category = tensors(root / "ft_arith"), tensors(root / "ft_category")
    for pos, (src, layer) in enumerate([(arith, 0), (arith, 1), (category, 2), (category, 3)]):
        for key in [k for k in src if k.startswith(f"model.layers.{layer}.")]:
            out_key = key.replace(f"layers.{layer}.", f"layers.{pos}.")
            want = src[key] * scale if (pos == 2 and "input_layernorm" in key) else src[key]
            assert torch.equal(got[out_key], want), out_key
    # `embeddings: path`: the embeddings from the first layer's model, the head from the last's
    assert torch.equal(got["model.embed_tokens.weight"], arith["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], category["lm_head.weight"])
    assert torch.equal(got["model.norm.weight"], category["model.norm.weight"])


def test_stated_embeddings_model_gives_embeddings_norm_and_head(tiny_family, tmp_path):
    root = family_dir(tiny_family)
    g = genome_of(tiny_family, embeddings=str(root / "ft_category"), scale=False)
    assert g.n_genes == len(g.slots)
    x = with_use(g, [(0, ARITH, i) for i in range(g.num_layers)])
    got, category = tensors(merged(g, x, tmp_path, "emb")), tensors(root / "ft_category")
    for key in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"):
        assert torch.equal(got[key], category[key]), key


@pytest.mark.parametrize("what", ["empty", "too long", "out of range", "not finite"])
def test_invalid_genotypes_raise_invalid_genotype_error(tiny_family, what):
    g = genome_of(tiny_family, repeats=3, max_layers=10)
    x = g.space.initial.copy()
    if what == "empty":
        x[:len(g.slots)] = -0.1
    elif what == "too long":
        x[:11] = 0.5
    elif what == "out of range":
        x[0] = 1.5
    else:
        x[-1] = np.nan
    with pytest.raises(InvalidGenotypeError) as err:
        g.merge_config_dict(x)
    assert {"empty": "empty", "too long": "max_layers 10", "out of range": "outside",
            "not finite": "not finite"}[what] in str(err.value)


def test_bad_dataflow_configs_name_their_field(tiny_family):
    root = family_dir(tiny_family)
    with pytest.raises(ConfigError, match=r"genome.dataflow.layers: \[2, 40\] is out of range"):
        genome_of(tiny_family, layers=[2, 40])
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_SLOTS}"):
        genome_of(tiny_family, repeats=MAX_SLOTS)
    bad = {
        "merge_method: passthrough": {"genome": {"dataflow": None}},
        "genome.base_model does not apply": {"genome": {"base_model": str(root / "base")}},
        "genome.dataflow.embeddings": {"genome": {"dataflow": {"embeddings": "nope"}}},
        "turn kinship off": {"kinship": {"penalty": 1.0}},
        "scale_range": {"genome": {"dataflow": {"scale_range": [1.5, 0.5]}}},
    }
    for needle, change in bad.items():
        data = dataflow_config(tiny_family)
        for section, values in change.items():
            for key, value in values.items():
                data.setdefault(section, {})[key] = value
        with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
            parse_config(data)


def test_a_previous_runs_storage_stands_for_its_final_model(tiny_family, tmp_path):
    root = family_dir(tiny_family)
    run = tmp_path / "ps"
    run.mkdir()
    (run / "llm_evo.sqlite").write_bytes(b"")
    data = dataflow_config(tiny_family)
    data["genome"]["models"] = [str(run), str(root / "ft_category")]
    with pytest.raises(ConfigError, match=r"genome.models\[0\]: .* without final_model/"):
        build_genome(parse_config(data))
    (run / "final_model").symlink_to(root / "ft_arith")
    g = build_genome(parse_config(data))
    assert g.models[0] == str(run / "final_model") and g.model_labels[0] == "ps (best)"
    assert yaml.safe_load(g.to_yaml(g.space.initial))["slices"][1]["sources"][0]["model"] == (
        str(run / "final_model"))
