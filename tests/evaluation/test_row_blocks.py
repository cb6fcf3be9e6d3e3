"""Row-blocked in-memory merges: bit for bit what `run_merge` writes, only for the methods
that are elementwise, and a resident model that refuses a tensor with a block missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_evo.config import GenomeConfig
from llm_evo.genome import Genome
from tests.e2e_helpers import FAMILY, family_dir

BLOCK = 4096  # bytes: every 2-D tensor of the tiny family is split into several blocks


@pytest.fixture(scope="module")
def root(tiny_family) -> Path:
    return family_dir(tiny_family)


def _config(root: Path, method: str) -> dict:
    models = [str(root / m) for m in FAMILY]
    base = str(root / "base")
    cfg = GenomeConfig(models=models, merge_method=method, base_model=base,
                       layer_granularity=4, normalize=method == "linear")
    genome = Genome(cfg, models, base, 8)
    x = np.random.default_rng(5).uniform(genome.space.lower, genome.space.upper)
    return genome.merge_config_dict(x, "float32")


def _on_disk(cfg: dict, out: Path) -> dict:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from safetensors.torch import load_file

    run_merge(MergeConfiguration.model_validate(cfg), out_path=str(out),
              options=MergeOptions(lazy_unpickle=True, quiet=True, write_model_card=False))
    tensors = {}
    for shard in out.glob("*.safetensors"):
        tensors.update(load_file(shard))
    return tensors


def _in_memory(cfg: dict) -> tuple[dict, int]:
    """Merged tensors reassembled from their blocks, and how many items were blocks."""
    import torch
    from mergekit.options import MergeOptions

    from llm_evo.evaluation.in_memory import InMemoryMerger, InputCache

    merger = InMemoryMerger(MergeOptions(lazy_unpickle=True, quiet=True), "cpu",
                            InputCache("cpu"), block_bytes=BLOCK)
    parts: dict[str, list] = {}
    blocks = 0
    for item in merger.tensors(cfg):
        parts.setdefault(item.name, []).append(item)
        blocks += item.rows is not None
    out = {}
    for name, items in parts.items():
        if len(items) == 1 and items[0].rows is None:
            out[name] = items[0].tensor
            continue
        items.sort(key=lambda i: i.rows[0])
        ends = [i.rows for i in items]
        assert ends[0][0] == 0, name
        assert all(a[1] == b[0] for a, b in zip(ends, ends[1:], strict=False)), name
        out[name] = torch.cat([i.tensor for i in items])
    return out, blocks


@pytest.mark.parametrize("method", ["task_arithmetic", "linear"])
def test_row_blocks_equal_mergekit_bit_for_bit(root, tmp_path, method):
    cfg = _config(root, method)
    expected = _on_disk(cfg, tmp_path / "m")
    got, blocks = _in_memory(cfg)
    assert blocks > len(expected)  # most tensors came in several blocks
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert bool((got[name] == tensor).all()), name


def test_a_method_that_ranks_whole_tensors_is_never_blocked(root, tmp_path):
    cfg = _config(root, "ties")  # magnitude sparsification ranks a whole tensor
    expected = _on_disk(cfg, tmp_path / "m")
    got, blocks = _in_memory(cfg)
    assert blocks == 0
    for name, tensor in expected.items():
        assert bool((got[name] == tensor).all()), name


def test_resident_model_refuses_a_tensor_with_a_block_missing(root):
    from mergekit.options import MergeOptions

    from llm_evo.evaluation.in_memory import InMemoryMerger, InputCache
    from llm_evo.evaluation.resident import ResidentHF

    cfg = _config(root, "task_arithmetic")
    merger = InMemoryMerger(MergeOptions(lazy_unpickle=True, quiet=True), "cpu",
                            InputCache("cpu"), block_bytes=BLOCK)
    items = list(merger.tensors(cfg))
    resident = ResidentHF(str(root / "base"), "cpu", "float32", batch_size=4)
    resident.write(items)  # every block: accepted
    dropped = next(i for i, item in enumerate(items) if item.rows and item.rows[0] > 0)
    with pytest.raises(RuntimeError, match="left 1 parameter"):
        resident.write(items[:dropped] + items[dropped + 1:])
