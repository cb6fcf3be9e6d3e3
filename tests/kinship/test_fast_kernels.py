"""The CPU pass's two kernels (llm_evo/kinship/_gram.c and numpy) against float64 NumPy on
raw checkpoint bytes: every dtype, every vector width, ragged tails and mixed dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llm_evo.errors import ConfigError
from llm_evo.kinship import fast
from llm_evo.kinship.reader import CheckpointReader

DTYPES = {"bfloat16": 0, "float16": 1, "float32": 2}
# _gram.accumulate's `kernel`: 0 picks by CPU, 8 AVX-512, 4 any CPU, 1 blocks (mixed dtypes)
VARIANTS = [0, 8, 4, 1]


def _rows(dtype: str, k: int, m: int, seed: int) -> tuple[list[bytes], list[np.ndarray]]:
    """A base and k models near it, stored as `dtype`: raw bytes and float64 values."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(m).astype(np.float32)
    rows = [base] + [base + rng.standard_normal(m).astype(np.float32) * 0.02 for _ in range(k)]
    raw, values = [], []
    for x in rows:
        t = torch.from_numpy(x).to(getattr(torch, dtype))
        raw.append(t.view(torch.uint8).numpy().tobytes())
        values.append(t.to(torch.float64).numpy())
    return raw, values


def _accumulate(raw: list[bytes], codes: list[int], m: int, variant: int):
    gram_mod = pytest.importorskip("llm_evo.kinship._gram")
    if variant == 8 and not gram_mod.HAVE_AVX512:
        pytest.skip("this CPU has no AVX-512")
    stride = max(len(r) for r in raw)
    buf = np.zeros((len(raw), stride), dtype=np.uint8)
    for i, r in enumerate(raw):
        buf[i, : len(r)] = np.frombuffer(r, dtype=np.uint8)
    k = len(raw) - 1
    gram, sums = np.zeros((k, k)), np.zeros(k)
    gram_mod.accumulate(buf, stride, bytes(codes), m, gram, sums, variant)
    return gram, sums


def test_the_c_kernel_was_built():
    # setup.py builds it as optional; CI must not fall back to numpy without saying so
    assert fast._gram is not None, "llm_evo.kinship._gram missing: no C compiler at install?"
    assert fast.kernel(2) == "c"


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_kernel_matches_float64(variant, dtype, k):
    m = 1000 + 13 * k  # not a multiple of any vector width: the tail is exercised
    raw, values = _rows(dtype, k, m, seed=k)
    gram, sums = _accumulate(raw, [DTYPES[dtype]] * (k + 1), m, variant)
    d = np.stack([v - values[0] for v in values[1:]])
    np.testing.assert_allclose(np.triu(gram), np.triu(d @ d.T), rtol=1e-12)
    np.testing.assert_allclose(np.tril(gram, -1), 0)  # only i <= j is written
    np.testing.assert_allclose(sums, d.sum(axis=1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_dtypes_and_accumulation(variant):
    m = 777
    parts = [_rows(dt, 1, m, seed=i) for i, dt in enumerate(["bfloat16", "float16", "float32"])]
    raw = [parts[0][0][0], parts[1][0][1], parts[2][0][1]]  # base bf16, fp16 and fp32 models
    values = [parts[0][1][0], parts[1][1][1], parts[2][1][1]]
    gram, sums = _accumulate(raw, [0, 1, 2], m, variant)
    d = np.stack([v - values[0] for v in values[1:]])
    np.testing.assert_allclose(np.triu(gram), np.triu(d @ d.T), rtol=1e-12)
    np.testing.assert_allclose(sums, d.sum(axis=1), rtol=1e-10)


@pytest.mark.parametrize("flush_denormals", [False, True])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_float16_value_decodes_exactly(variant, flush_denormals):
    # one binade at a time (subnormals are binade 0): its values share an ulp, so the sum of
    # the values and of their squares is exact in float64 and must match to the last bit.
    # With the CPU flushing float32 denormals (DAZ, as torch.set_flush_denormal sets it for
    # this thread), subnormal halves must still decode.
    if flush_denormals and not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        for sign in (0, 1):
            for exponent in range(31):
                halves = (sign << 15) | (exponent << 10) | np.arange(1024, dtype=np.uint16)
                values = halves.astype(np.uint16).view(np.float16).astype(np.float64)
                gram, sums = _accumulate([bytes(2048), halves.astype("<u2").tobytes()], [1, 1],
                                         1024, variant)
                assert sums[0] == values.sum(), (sign, exponent)
                assert gram[0, 0] == values @ values, (sign, exponent)
    finally:
        torch.set_flush_denormal(False)
    for special in (np.inf, -np.inf, np.nan):
        raw = np.array([special], dtype=np.float16).tobytes()
        _, s1 = _accumulate([bytes(2), raw], [1, 1], 1, variant)
        assert s1[0] == special or (np.isnan(special) and np.isnan(s1[0]))


def test_non_finite_values_reach_the_statistics():
    raw, _ = _rows("bfloat16", 2, 64, seed=0)
    bad = bytearray(raw[1])
    nan = torch.tensor([float("nan")], dtype=torch.bfloat16)
    bad[10:12] = nan.view(torch.uint8).numpy().tobytes()
    gram, sums = _accumulate([raw[0], bytes(bad), raw[2]], [0, 0, 0], 64, 0)
    assert np.isnan(gram[0, 0]) and np.isnan(sums[0]) and np.isfinite(gram[1, 1])


def test_bad_arguments_are_value_errors():
    gram_mod = pytest.importorskip("llm_evo.kinship._gram")
    buf = np.zeros((3, 8), dtype=np.uint8)
    g, s = np.zeros((2, 2)), np.zeros(2)
    with pytest.raises(ValueError, match="do not fit"):
        gram_mod.accumulate(buf, 8, bytes([0, 0, 0]), 5, g, s)  # 5 bf16 = 10 bytes > 8
    with pytest.raises(ValueError, match="unknown dtype code"):
        gram_mod.accumulate(buf, 8, bytes([0, 7, 0]), 2, g, s)
    with pytest.raises(ValueError, match="gram needs"):
        gram_mod.accumulate(buf, 8, bytes([0, 0, 0]), 2, np.zeros(3), s)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gram_pass_kernels_agree_over_many_chunks(ck, tmp_path, monkeypatch, dtype):
    base = ck.random_state(0)
    models = [ck.fine_tune(base, seed) for seed in (2, 3, 4)]
    paths = [ck.write(tmp_path / f"m{i}", st, dtype) for i, st in enumerate([base, *models])]
    readers = [CheckpointReader(p) for p in paths]
    names = list(ck.SHAPES)
    items = [(n, readers[0].info(n).numel) for n in names]
    infos = [[r.info(n) for r in readers] for n in names]
    stored = [ck.stored(st, dtype) for st in [base, *models]]
    results = {}
    for kind in ("c", "numpy"):
        monkeypatch.setenv("LLM_EVO_KINSHIP_KERNEL", kind)
        got = {}
        fast.gram_pass(items, infos, 3, labels=["base", "a", "b", "c"], workers=2,
                       chunk=1 << 14, on_tensor=lambda n, s, got=got: got.setdefault(n, s))
        results[kind] = got
    for n in names:
        d = np.stack([(s[n] - stored[0][n]).astype(np.float64).ravel() for s in stored[1:]])
        for kind, got in results.items():
            g = got[n].gram
            np.testing.assert_allclose(g, d @ d.T, rtol=1e-12, atol=1e-300, err_msg=kind)
            np.testing.assert_allclose(got[n].sums, d.sum(axis=1), rtol=1e-9, atol=1e-9)
    for r in readers:
        r.close()


def test_kernel_choice_is_checked(monkeypatch):
    monkeypatch.setenv("LLM_EVO_KINSHIP_KERNEL", "fortran")
    with pytest.raises(ConfigError, match="LLM_EVO_KINSHIP_KERNEL=fortran"):
        fast.kernel(2)
    monkeypatch.setenv("LLM_EVO_KINSHIP_KERNEL", "numpy")
    assert fast.kernel(2) == "numpy"
    monkeypatch.setenv("LLM_EVO_KINSHIP_KERNEL", "c")
    with pytest.raises(ConfigError, match="at most 32 models"):
        fast.kernel(33)
