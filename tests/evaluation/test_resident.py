"""The resident model of an in-memory worker, resized for a data-flow path: after the
rebuild and the write, it computes exactly what mergekit's on-disk merge of the same path
computes, and a parent's depth comes back."""

from __future__ import annotations

import numpy as np
import torch

from llm_evo.config import GenomeConfig
from llm_evo.dataflow import DataFlowGenome
from tests.cli.helpers import cli
from tests.e2e_helpers import family_dir


def test_a_resized_resident_model_equals_the_merge_on_disk(tiny_family, tmp_path):
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    from llm_evo.evaluation.in_memory import InMemoryMerger, InputCache, output_layers
    from llm_evo.evaluation.resident import ResidentHF
    from llm_evo.genome import dump_yaml

    root = family_dir(tiny_family)
    models = [str(root / "ft_arith"), str(root / "ft_category")]
    genome = DataFlowGenome(GenomeConfig(models=models, merge_method="passthrough",
                                         dataflow={"repeats": 2}), models, 8)
    x = np.full(genome.n_genes, -0.5)
    x[:8] = 0.5  # ft_arith's 8 layers, then ft_category's 2-5 (scaled), ft_arith's 6-7 again
    x[8 + 2:8 + 6] = 0.5
    x[16 + 6:16 + 8] = 0.5
    x[-2:] = [0.75, 1.25]
    config = genome.merge_config_dict(x, "float32")
    assert output_layers(config) == 14

    resident = ResidentHF(models[0], "cpu", "float32", batch_size=4)
    resident.lm.__dict__["_llm_evo_pairs"] = {("a", "b"): ([1], [2])}  # a memo entry
    assert resident.resize(8) == 0.0 and resident.num_layers == 8
    assert resident.resize(14) > 0 and resident.num_layers == 14
    merger = InMemoryMerger(MergeOptions(lazy_unpickle=True, quiet=True), "cpu",
                            InputCache("cpu"))
    resident.write(merger.tensors(config))
    assert resident.lm.__dict__["_llm_evo_pairs"] == {("a", "b"): ([1], [2])}  # kept

    (tmp_path / "path.yml").write_text(dump_yaml(config))
    proc = cli("mergekit-yaml", str(tmp_path / "path.yml"), str(tmp_path / "out"),
               "--lazy-unpickle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    on_disk = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    tokens = torch.tensor([[1, 5, 9, 14, 3, 7]])
    with torch.no_grad():
        assert torch.equal(resident.model(tokens).logits, on_disk.eval()(tokens).logits)

    assert resident.resize(resident.base_layers) > 0 and resident.num_layers == 8
