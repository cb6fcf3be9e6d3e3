"""Checkpoint layouts and edge cases: shards, .bin, dtypes, vocab mismatch, missing, tied."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from llm_evo.errors import ConfigError
from llm_evo.kinship import CheckpointReader, kinship
from llm_evo.kinship.reader import resolve_model_path

REL = 1e-6


def _assert_close(got, want):
    for m in ("cs", "pcc", "ed"):
        assert got[m] == pytest.approx(want[m], rel=REL), m


def test_sharded_checkpoint_with_index(ck, family, tmp_path):
    states = family["states"]
    sharded = ck.write(tmp_path / "sharded", states["a"], shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) == 3
    reader = CheckpointReader(sharded)
    assert reader.format == "safetensors" and len(reader.files) == 3
    assert sorted(reader.names()) == sorted(ck.SHAPES)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(reader.read(name), states["a"][name])
    p = family["paths"]
    _assert_close(kinship(sharded, p["b"], p["base"]), kinship(p["a"], p["b"], p["base"]).metrics)


def test_index_naming_a_missing_shard_is_an_error(ck, family, tmp_path):
    sharded = ck.write(tmp_path / "sharded", family["states"]["a"], shards=2)
    next(iter(sorted(sharded.glob("*.safetensors")))).unlink()
    with pytest.raises(ConfigError, match="is listed but missing"):
        CheckpointReader(sharded)


def test_bin_fallback(ck, family, tmp_path):
    st = family["states"]
    pa = ck.write(tmp_path / "a-bin", st["a"], fmt="bin")
    pbase = ck.write(tmp_path / "base-bin", st["base"], torch.bfloat16, fmt="bin")
    reader = CheckpointReader(pa)
    assert reader.format == "bin" and reader.files[0].name == "pytorch_model.bin"
    got = kinship(pa, family["paths"]["b"], pbase, split=True)
    want = ck.numpy_kinship(
        ck.stored(st["base"], torch.bfloat16), ck.stored(st["a"]), ck.stored(st["b"]), split=True
    )
    _assert_close(got, want)
    sharded = ck.write(tmp_path / "b-bin-sharded", st["b"], torch.float16, fmt="bin", shards=3)
    assert (sharded / "pytorch_model.bin.index.json").is_file()
    reader = CheckpointReader(sharded)
    assert reader.format == "bin" and len(reader.files) == 3
    got = kinship(pa, sharded, pbase)
    want = ck.numpy_kinship(
        ck.stored(st["base"], torch.bfloat16), ck.stored(st["a"]), ck.stored(st["b"], torch.float16)
    )
    _assert_close(got, want)


def test_mixed_dtypes(ck, family, tmp_path):
    st = family["states"]
    pa = ck.write(tmp_path / "a16", st["a"], torch.float16)
    pb = ck.write(tmp_path / "b-bf16", st["b"], torch.bfloat16, shards=2)
    assert CheckpointReader(pa).info("model.norm.weight").dtype == "float16"
    assert CheckpointReader(pb).read("model.norm.weight").dtype == torch.bfloat16
    got = kinship(pa, pb, family["paths"]["base"])
    want = ck.numpy_kinship(
        ck.stored(st["base"]), ck.stored(st["a"], torch.float16), ck.stored(st["b"], torch.bfloat16)
    )
    _assert_close(got, want)


def test_vocab_mismatch_uses_common_rows(ck, family, tmp_path):
    st = family["states"]
    grown = {k: v.clone() for k, v in st["a"].items()}
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        grown[name] = torch.cat([grown[name], torch.randn(4, 8)])  # 44 rows against 40
    pa = ck.write(tmp_path / "grown", grown)
    got = kinship(pa, family["paths"]["b"], family["paths"]["base"])
    sa = {k: v[:40] if v.shape[0] == 44 else v for k, v in ck.stored(grown).items()}
    _assert_close(got, ck.numpy_kinship(ck.stored(st["base"]), sa, ck.stored(st["b"])))
    assert set(got.report.truncated) == {"model.embed_tokens.weight", "lm_head.weight"}
    assert got.tensors_compared == len(ck.SHAPES) and got.tensors_skipped == 0
    assert any("vocab size differs" in w and ": 44" in w for w in got.warnings), got.warnings


def test_missing_extra_and_mismatched_tensors_are_skipped_and_counted(ck, family, tmp_path):
    st = family["states"]
    a = {k: v.clone() for k, v in st["a"].items()}
    del a["model.layers.0.self_attn.q_proj.weight"]
    a["model.extra.weight"] = torch.randn(3)
    a["model.layers.1.self_attn.q_proj.weight"] = torch.randn(8, 9)  # not a vocab dimension
    pa = ck.write(tmp_path / "odd", a)
    got = kinship(pa, family["paths"]["b"], family["paths"]["base"])
    assert got.report.missing == ("model.layers.0.self_attn.q_proj.weight",)
    assert got.report.extra == ("model.extra.weight",)
    assert got.report.mismatched == ("model.layers.1.self_attn.q_proj.weight",)
    assert got.tensors_skipped == 2
    assert got.tensors_compared == len(ck.SHAPES) - 2
    kept = [n for n in ck.SHAPES if "self_attn.q_proj" not in n]
    want = ck.numpy_kinship(ck.stored(st["base"]), ck.stored(a), ck.stored(st["b"]), names=kept)
    _assert_close(got, want)
    counts = got.to_dict()["report"]["counts"]
    assert counts == {
        "missing": 1, "extra": 1, "mismatched": 1, "truncated": 0, "tied": 0, "non_float": 0
    }  # fmt: skip
    text = " ".join(got.warnings)
    assert "missing from a model" in text and "not in the base" in text
    assert "different shape" in text


def _tied(state):
    tied = {k: v.clone() for k, v in state.items()}
    tied["lm_head.weight"] = tied["model.embed_tokens.weight"]  # shared storage
    return tied


def test_tied_embeddings_in_bin_are_counted_once(ck, family, tmp_path):
    st = family["states"]
    tb, ta, tbb = _tied(st["base"]), _tied(st["a"]), _tied(st["b"])
    paths = [
        ck.write(tmp_path / f"tied-{n}", s, fmt="bin")
        for n, s in [("a", ta), ("b", tbb), ("base", tb)]
    ]
    reader = CheckpointReader(paths[2])
    assert reader.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    got = kinship(*paths)
    assert got.report.tied == ("lm_head.weight",)
    assert got.tensors_compared == len(ck.SHAPES) - 1
    names = [n for n in ck.SHAPES if n != "lm_head.weight"]
    want = ck.numpy_kinship(ck.stored(tb), ck.stored(ta), ck.stored(tbb), names=names)
    _assert_close(got, want)
    # Counting lm_head twice would weigh the embeddings double and change the result.
    double = ck.numpy_kinship(ck.stored(tb), ck.stored(ta), ck.stored(tbb))
    assert double["cs"] != pytest.approx(want["cs"], rel=REL)


def test_tied_embeddings_from_config_in_safetensors(ck, family, tmp_path):
    st = family["states"]
    config = {"tie_word_embeddings": True}
    paths = [
        ck.write(
            tmp_path / f"cfg-{n}", {k: v.clone() for k, v in _tied(st[n]).items()}, config=config
        )
        for n in ("a", "b", "base")
    ]
    got = kinship(*paths)
    assert got.report.tied == ("lm_head.weight",)
    assert any("tied embeddings counted once" in w for w in got.warnings)
    untied = [
        ck.write(tmp_path / f"u{n}", {k: v.clone() for k, v in _tied(st[n]).items()}, config={})
        for n in ("a", "b", "base")
    ]
    assert kinship(*untied).report.tied == ()


def test_non_float_tensors_are_skipped(ck, family, tmp_path):
    st = family["states"]
    paths = []
    for n in ("a", "b", "base"):
        s = dict(st[n])
        s["model.rotary.inv_freq_ids"] = torch.arange(5)
        paths.append(ck.write(tmp_path / f"nf-{n}", s))
    got = kinship(*paths)
    assert got.report.non_float == ("model.rotary.inv_freq_ids",)
    assert got.tensors_compared == len(ck.SHAPES)


def test_bad_paths_and_files(tmp_path, family):
    with pytest.raises(ConfigError, match="model path not found: .*nowhere"):
        CheckpointReader(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="not a local path, and not in the Hugging Face cache"):
        resolve_model_path("no-such-org/no-such-model-kinship-test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no \\*.safetensors or .bin weights"):
        CheckpointReader(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(ConfigError, match="model.safetensors: not a readable safetensors file"):
        CheckpointReader(broken)
    (tmp_path / "badbin").mkdir()
    (tmp_path / "badbin" / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="not a readable PyTorch weights file"):
        CheckpointReader(tmp_path / "badbin")
    bad_index = tmp_path / "badindex"
    bad_index.mkdir()
    (bad_index / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    with pytest.raises(ConfigError, match="empty 'weight_map'"):
        CheckpointReader(bad_index)


def test_reads_are_views_released_after_use(family):
    """Each read maps the file anew, so nothing stays mapped between tensors."""
    reader = CheckpointReader(family["paths"]["a"])
    name = "model.layers.1.mlp.up_proj.weight"
    first, second = reader.read(name), reader.read(name)
    assert torch.equal(first, second)
    assert first.untyped_storage().data_ptr() != second.untyped_storage().data_ptr()
    assert np.isfinite(first.numpy()).all()


_RSS_SCRIPT = """
import resource, sys
import torch, safetensors.torch
from llm_evo.kinship import kinship
if len(sys.argv) > 1:
    kinship(*sys.argv[1:4])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def test_peak_memory_is_a_few_tensors_not_a_model(ck, tmp_path):
    shapes = {f"layers.{i}.w": (1024, 2048) for i in range(16)}  # 8 MiB each, 128 MiB a model
    base = ck.random_state(0, shapes)
    paths = [
        ck.write(tmp_path / n, ck.fine_tune(base, seed, scale=0.01) if seed else base)
        for n, seed in [("a", 1), ("b", 2), ("base", 0)]
    ]
    del base

    def peak_mib(*args) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, *map(str, args)],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[-1])

    idle, busy = peak_mib(), peak_mib(*paths)
    # Holding one whole model would add 128 MiB; streaming adds a few 8 MiB tensors.
    assert busy - idle < 96, (idle, busy)
