"""Kinship metrics against an independent float64 NumPy computation on flattened deltas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_evo.errors import ConfigError
from llm_evo.kinship import (
    GramAccumulator,
    GramStats,
    kinship,
    kinship_matrix,
    parse_metrics,
)

REL = 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("split", [False, True])
def test_metrics_match_numpy(ck, tmp_path, dtype, split, kinship_kernel):
    base = ck.random_state(0)
    shared = ck.random_state(1)
    a, b = ck.fine_tune(base, 2, shared), ck.fine_tune(base, 3, shared)
    paths = [ck.write(tmp_path / n, st, dtype) for n, st in [("a", a), ("b", b), ("base", base)]]

    got = kinship(*paths, split=split)
    want = ck.numpy_kinship(
        ck.stored(base, dtype), ck.stored(a, dtype), ck.stored(b, dtype), split=split
    )

    assert set(got.metrics) == {"cs", "pcc", "ed"}
    for m in ("cs", "pcc", "ed"):
        assert got[m] == pytest.approx(want[m], rel=REL), m
    assert 0.2 < got["cs"] < 0.6  # related, not identical: the check is not vacuous
    assert got.tensors_compared == len(ck.SHAPES)
    assert got.tensors_skipped == 0
    assert got.report.elements_compared == sum(math.prod(s) for s in ck.SHAPES.values())
    assert got.report.kernel == kinship_kernel  # the pass the test asked for is the one used
    assert got.warnings == ()


def test_split_weights_by_size_full_by_energy(ck, tmp_path):
    # a and b agree on the big tensor and disagree on the small ones, whose deltas are 100x
    # larger: full mode (energy-weighted) sees unrelated models, split mode (size-weighted) kin.
    big = "model.layers.1.mlp.up_proj.weight"
    base = ck.random_state(0)
    a, other = ck.fine_tune(base, 2), ck.fine_tune(base, 5)
    b = {}
    for n in base:
        if n != big:
            a[n] = base[n] + 100 * (a[n] - base[n])
        b[n] = a[n].clone() if n == big else base[n] + 100 * (other[n] - base[n])
    paths = [ck.write(tmp_path / n, st) for n, st in [("a", a), ("b", b), ("base", base)]]
    full, split = kinship(*paths, metrics="cs"), kinship(*paths, metrics="cs", split=True)
    sa, sb, sbase = ck.stored(a), ck.stored(b), ck.stored(base)
    assert full["cs"] == pytest.approx(ck.numpy_kinship(sbase, sa, sb)["cs"], rel=REL)
    assert split["cs"] == pytest.approx(ck.numpy_kinship(sbase, sa, sb, split=True)["cs"], rel=REL)
    assert full["cs"] < 0.5 < 0.95 < split["cs"]


def test_signed_cosine_and_abs_cosine(ck, tmp_path):
    base = ck.random_state(0)
    a = ck.fine_tune(base, 2)
    b = {k: base[k] - 0.5 * (a[k] - base[k]) + 0.01 * torch.randn(v.shape) for k, v in base.items()}
    paths = [ck.write(tmp_path / n, st) for n, st in [("a", a), ("b", b), ("base", base)]]
    signed = kinship(*paths, metrics=["cs"])
    absolute = kinship(*paths, metrics=["cs"], abs_cosine=True)
    assert signed["cs"] < -0.9
    assert absolute["cs"] == pytest.approx(-signed["cs"], rel=1e-12)
    assert absolute.abs_cosine and not signed.abs_cosine


def _quantized(delta: np.ndarray) -> np.ndarray:
    absmax = np.abs(delta).max()
    if absmax == 0:
        return delta
    return np.clip(np.round(delta * (127 / absmax)), -127, 127) * (absmax / 127)


@pytest.mark.parametrize("split", [False, True])
def test_low_precision_quantises_each_delta_tensor(ck, family, split):
    st = {k: ck.stored(v) for k, v in family["states"].items()}
    qa = {n: _quantized(st["a"][n] - st["base"][n]) for n in st["base"]}
    qb = {n: _quantized(st["b"][n] - st["base"][n]) for n in st["base"]}
    zero = {n: np.zeros_like(v) for n, v in st["base"].items()}
    want = ck.numpy_kinship(zero, qa, qb, split=split)
    p = family["paths"]
    got = kinship(p["a"], p["b"], p["base"], split=split, low_precision=True)
    exact = kinship(p["a"], p["b"], p["base"], split=split)
    for m in ("cs", "pcc", "ed"):
        assert got[m] == pytest.approx(want[m], rel=REL), m
    assert got["cs"] != exact["cs"]
    assert got["cs"] == pytest.approx(exact["cs"], abs=0.01)  # int8 is close, not equal
    assert got.low_precision


def test_matrix_gram_and_pairs(ck, family, kinship_kernel):
    p, st = family["paths"], {k: ck.stored(v) for k, v in family["states"].items()}
    m = kinship_matrix([p["a"], p["b"], p["c"]], p["base"])
    deltas = np.stack(
        [np.concatenate([(st[x][n] - st["base"][n]).ravel() for n in ck.SHAPES]) for x in "abc"]
    )
    np.testing.assert_allclose(m.gram, deltas @ deltas.T, rtol=1e-12)
    np.testing.assert_allclose(m.sums, deltas.sum(axis=1), rtol=1e-9, atol=1e-9)
    assert m.count == deltas.shape[1]
    assert m.names == ("a", "b", "c")
    cs = m.cosine()
    np.testing.assert_allclose(cs, cs.T)
    np.testing.assert_allclose(np.diag(cs), 1.0)
    np.testing.assert_allclose(np.diag(m.euclidean()), 0.0)
    np.testing.assert_allclose(m.pearson(), np.corrcoef(deltas), rtol=1e-9)
    for i, j, x, y in [(0, 1, "a", "b"), (0, 2, "a", "c"), (1, 2, "b", "c")]:
        want = ck.numpy_kinship(st["base"], st[x], st[y])
        want_split = ck.numpy_kinship(st["base"], st[x], st[y], split=True)
        for metric in ("cs", "pcc", "ed"):
            assert m.metric(metric)[i, j] == pytest.approx(want[metric], rel=REL)
            assert m.metric(metric, split=True)[i, j] == pytest.approx(want_split[metric], rel=REL)
    assert cs[0, 1] > 0.2 and abs(cs[0, 2]) < 0.05  # a, b share a direction; c does not


def test_accumulator_chunks_threads_and_buckets():
    gen = torch.Generator().manual_seed(7)
    tensors = {f"layers.{i}.w": torch.randn(3, 4, 37, generator=gen) for i in range(4)}
    base = {n: torch.randn(t.shape[1:], generator=gen) for n, t in tensors.items()}

    def layer(name: str) -> int | None:
        i = int(name.split(".")[1])
        return None if i == 3 else i % 2  # two blocks; layer 3 is left out of the buckets

    with GramAccumulator(3, layer, chunk=7, workers=2) as acc:
        for name, t in tensors.items():
            acc.add(name, base[name].to(torch.bfloat16), list(t.to(torch.bfloat16)))
    for bucket, names in [(0, ["layers.0.w", "layers.2.w"]), (1, ["layers.1.w"])]:
        d = np.concatenate(
            [
                (tensors[n].to(torch.bfloat16).double() - base[n].to(torch.bfloat16).double())
                .reshape(3, -1)
                .numpy()
                for n in names
            ],
            axis=1,
        )
        np.testing.assert_allclose(acc.buckets[bucket].gram, d @ d.T, rtol=1e-12)
        np.testing.assert_allclose(acc.buckets[bucket].sums, d.sum(axis=1), rtol=1e-9, atol=1e-12)
        assert acc.buckets[bucket].count == d.shape[1]
    assert set(acc.buckets) == {0, 1}
    assert len(acc.tensors) == 4
    assert acc.total.count == 4 * 4 * 37


def test_add_deltas_and_subset():
    d = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 3.0]])
    acc = GramAccumulator(3, workers=1)
    stats = acc.add_deltas("w", list(d))
    np.testing.assert_allclose(stats.gram, (d @ d.T).double().numpy())
    pair = stats.subset([0, 2])
    assert pair.gram.tolist() == [[5.0, 0.0], [0.0, 9.0]]
    assert isinstance(pair, GramStats) and pair.count == 3


def test_parse_metrics():
    assert parse_metrics("cs,pcc,ed") == ("cs", "pcc", "ed")
    assert parse_metrics("ed pcc") == ("ed", "pcc")
    assert parse_metrics(["cs", "pcc, ed", "cs"]) == ("cs", "pcc", "ed")
    with pytest.raises(ConfigError, match="unknown metric 'kl'"):
        parse_metrics("cs,kl")
    with pytest.raises(ConfigError, match="no metric"):
        parse_metrics(" , ")


def test_all_zero_delta_gives_nan_with_explanation(ck, family, tmp_path):
    p, st = family["paths"], {k: ck.stored(v) for k, v in family["states"].items()}
    same = ck.write(tmp_path / "same", family["states"]["base"])
    for split in (False, True):
        r = kinship(same, p["b"], p["base"], split=split)
        assert math.isnan(r["cs"]) and math.isnan(r["pcc"])
        db = [(st["b"][n] - st["base"][n]).ravel() for n in ck.SHAPES]
        if split:  # per-tensor distances, size-weighted
            want = sum(d.size * np.linalg.norm(d) for d in db) / sum(d.size for d in db)
        else:
            want = np.linalg.norm(np.concatenate(db))
        assert r["ed"] == pytest.approx(float(want), rel=REL)
        assert any("all zero" in w for w in r.warnings), r.warnings
        assert r.to_dict()["metrics"]["cs"] is None  # JSON-safe


def test_frozen_tensor_left_out_of_split_average(ck, family, tmp_path):
    states = family["states"]
    frozen = "model.layers.0.mlp.up_proj.weight"
    a = {k: v.clone() for k, v in states["a"].items()}
    a[frozen] = states["base"][frozen].clone()
    pa = ck.write(tmp_path / "frozen", a)
    p = family["paths"]
    r = kinship(pa, p["b"], p["base"], split=True)
    st = {k: ck.stored(v) for k, v in states.items()}
    rest = [n for n in ck.SHAPES if n != frozen]
    want = ck.numpy_kinship(st["base"], ck.stored(a), st["b"], names=rest, split=True)
    assert r["cs"] == pytest.approx(want["cs"], rel=REL)
    assert r["pcc"] == pytest.approx(want["pcc"], rel=REL)
    want_ed = ck.numpy_kinship(st["base"], ck.stored(a), st["b"], split=True)["ed"]
    assert r["ed"] == pytest.approx(want_ed, rel=REL)  # ed is defined on every tensor
    assert any("1 of 9 tensor(s) left out" in w for w in r.warnings), r.warnings


def test_identical_models(family):
    p = family["paths"]
    r = kinship(p["a"], p["a"], p["base"])
    assert r["cs"] == pytest.approx(1.0, abs=1e-12)
    assert r["pcc"] == pytest.approx(1.0, abs=1e-12)
    assert r["ed"] == 0.0


def test_nan_weight_is_an_error_naming_the_tensor(ck, family, tmp_path, kinship_kernel):
    bad = {k: v.clone() for k, v in family["states"]["a"].items()}
    bad["model.layers.0.self_attn.q_proj.weight"][3, 4] = float("nan")
    path = ck.write(tmp_path / "nan-model", bad, torch.bfloat16)
    p = family["paths"]
    with pytest.raises(ConfigError, match=r"nan-model: tensor model.layers.0.self_attn.q_proj"):
        kinship(path, p["b"], p["base"])
    inf_base = {k: v.clone() for k, v in family["states"]["base"].items()}
    inf_base["model.norm.weight"][0] = float("inf")
    pb = ck.write(tmp_path / "inf-base", inf_base)
    with pytest.raises(
        ConfigError, match=r"inf-base: tensor model.norm.weight contains NaN or inf"
    ):
        kinship(p["a"], p["b"], pb, low_precision=True)


def test_bad_device_and_metric_are_config_errors(family):
    p = family["paths"]
    with pytest.raises(ConfigError, match="--device"):
        kinship(p["a"], p["b"], p["base"], device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            kinship(p["a"], p["b"], p["base"], device="cuda")
    with pytest.raises(ConfigError, match="unknown metric"):
        kinship(p["a"], p["b"], p["base"], metrics="cos")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(family):
    p = family["paths"]
    cpu = kinship(p["a"], p["b"], p["base"], split=True)
    gpu = kinship(p["a"], p["b"], p["base"], split=True, device="cuda")
    for m in ("cs", "pcc", "ed"):
        assert gpu[m] == pytest.approx(cpu[m], rel=1e-9)


def test_matrix_buckets_by_key(ck, family):
    p, st = family["paths"], {k: ck.stored(v) for k, v in family["states"].items()}

    def block(name: str) -> str | None:
        if ".layers." not in name:
            return None
        return "attn" if "self_attn" in name else "other"

    m = kinship_matrix([p["a"], p["b"], p["c"]], p["base"], key=block)
    assert set(m.buckets) == {"attn", "other"}
    attn = [n for n in ck.SHAPES if block(n) == "attn"]
    d = np.stack(
        [np.concatenate([(st[x][n] - st["base"][n]).ravel() for n in attn]) for x in "abc"]
    )
    np.testing.assert_allclose(m.buckets["attn"].gram, d @ d.T, rtol=1e-12)
    regrouped = m.grouped(block)
    for key in m.buckets:
        np.testing.assert_allclose(regrouped[key].gram, m.buckets[key].gram, rtol=1e-12)
        assert regrouped[key].count == m.buckets[key].count
    assert m.buckets["attn"].count + m.buckets["other"].count < m.count  # embeddings left out
