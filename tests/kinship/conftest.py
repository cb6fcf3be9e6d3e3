"""Tiny random checkpoints on disk, and an independent NumPy float64 kinship for reference."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

# A tiny Llama-ish layout. The 600 x 500 tensor is larger than one CPU chunk, so the chunked
# and multi-threaded paths run end to end.
SHAPES: dict[str, tuple[int, ...]] = {
    "model.embed_tokens.weight": (40, 8),
    "model.layers.0.input_layernorm.weight": (8,),
    "model.layers.0.self_attn.q_proj.weight": (8, 8),
    "model.layers.0.mlp.up_proj.weight": (16, 8),
    "model.layers.1.input_layernorm.weight": (8,),
    "model.layers.1.self_attn.q_proj.weight": (8, 8),
    "model.layers.1.mlp.up_proj.weight": (600, 500),
    "model.norm.weight": (8,),
    "lm_head.weight": (40, 8),
}

State = dict[str, torch.Tensor]


def random_state(seed: int, shapes: dict[str, tuple[int, ...]] = SHAPES) -> State:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def fine_tune(base: State, seed: int, shared: State | None = None, scale: float = 0.05) -> State:
    """base + a delta that is partly `shared` (so two fine-tunes are related) and partly own."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in base.items():
        own = torch.randn(t.shape, generator=gen)
        delta = own if shared is None else 0.6 * shared[name] + 0.8 * own
        out[name] = t + scale * delta
    return out


def write_checkpoint(
    path: Path,
    state: State,
    dtype: torch.dtype = torch.float32,
    *,
    fmt: str = "safetensors",
    shards: int = 1,
    config: dict | None = None,
) -> Path:
    """Write state as safetensors (optionally sharded with an index) or as a .bin state dict."""
    path.mkdir(parents=True, exist_ok=True)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    if shards == 1:
        if fmt == "bin":
            torch.save(cast, path / "pytorch_model.bin")
        else:
            save_file({k: v.contiguous() for k, v in cast.items()}, str(path / "model.safetensors"))
    else:
        stem, ext = ("pytorch_model", "bin") if fmt == "bin" else ("model", "safetensors")
        names = list(cast)
        per = -(-len(names) // shards)
        weight_map = {}
        for s in range(shards):
            file = f"{stem}-{s + 1:05d}-of-{shards:05d}.{ext}"
            part = {n: cast[n].contiguous() for n in names[s * per : (s + 1) * per]}
            if fmt == "bin":
                torch.save(part, path / file)
            else:
                save_file(part, str(path / file))
            weight_map |= dict.fromkeys(part, file)
        index = {"metadata": {}, "weight_map": weight_map}
        (path / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


def stored(state: State, dtype: torch.dtype = torch.float32) -> dict[str, np.ndarray]:
    """The values a checkpoint of `dtype` holds, as float64 NumPy arrays."""
    return {k: v.to(dtype).to(torch.float64).numpy() for k, v in state.items()}


def numpy_kinship(
    base: dict[str, np.ndarray],
    a: dict[str, np.ndarray],
    b: dict[str, np.ndarray],
    names: Sequence[str] | None = None,
    split: bool = False,
) -> dict[str, float]:
    """cs, pcc, ed on the fully flattened float64 deltas, or per tensor weighted by size."""
    names = list(names or base)

    def metrics(da: np.ndarray, db: np.ndarray) -> dict[str, float]:
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN for an all-zero delta
            return {
                "cs": float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db))),
                "pcc": float(np.corrcoef(da, db)[0, 1]),
                "ed": float(np.linalg.norm(da - db)),
            }

    deltas = [((a[n] - base[n]).ravel(), (b[n] - base[n]).ravel()) for n in names]
    if not split:
        return metrics(
            np.concatenate([d[0] for d in deltas]), np.concatenate([d[1] for d in deltas])
        )
    per = [(metrics(da, db), da.size) for da, db in deltas]
    total = sum(size for _, size in per)
    return {m: sum(v[m] * size for v, size in per) / total for m in ("cs", "pcc", "ed")}


@pytest.fixture
def family(tmp_path: Path) -> dict:
    """base, two related fine-tunes a and b, and an unrelated c, as fp32 safetensors."""
    base = random_state(0)
    shared = random_state(1)
    states = {
        "base": base,
        "a": fine_tune(base, 2, shared),
        "b": fine_tune(base, 3, shared),
        "c": fine_tune(base, 4),
    }
    paths = {name: write_checkpoint(tmp_path / name, st) for name, st in states.items()}
    return {"root": tmp_path, "states": states, "paths": paths}


@pytest.fixture(params=["c", "numpy"])
def kinship_kernel(request, monkeypatch) -> str:
    """Runs a test once with each kernel of the CPU pass (llm_evo.kinship.fast)."""
    monkeypatch.setenv("LLM_EVO_KINSHIP_KERNEL", request.param)
    return request.param


@pytest.fixture
def ck() -> SimpleNamespace:
    """The helpers above, for tests (conftest modules are not importable by name)."""
    return SimpleNamespace(
        SHAPES=SHAPES,
        random_state=random_state,
        fine_tune=fine_tune,
        write=write_checkpoint,
        stored=stored,
        numpy_kinship=numpy_kinship,
    )
