#!/usr/bin/env python
"""Build "earlier merges" of the tiny family, so `llm-evo pool` starts from more than two models.

The tiny family (scripts/make_tiny_family.py) has one base and two fine-tunes. A model pool
in the wild also holds merges made before: here, task-arithmetic and linear merges of the
two fine-tunes at different weights, written with mergekit next to the family. With the two
fine-tunes they form a starting pool of six related models of one base.

Usage: ``python scripts/make_pool_seeds.py [--family models/tiny] [--out models/tiny_pool]``.
Library use: ``build_seeds(family_dir, out_dir)`` returns the seed folders (reused when
present, so tests and the docs' runs share them).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")

# name -> (merge method, weight of ft_arith, weight of ft_category)
SEEDS: dict[str, tuple[str, float, float]] = {
    "ta_arith_1.0_cat_0.4": ("task_arithmetic", 1.0, 0.4),
    "ta_arith_0.4_cat_1.0": ("task_arithmetic", 0.4, 1.0),
    "ta_arith_0.7_cat_0.7": ("task_arithmetic", 0.7, 0.7),
    "linear_arith_0.3_cat_0.7": ("linear", 0.3, 0.7),
}


def seed_config(family: Path, method: str, w_arith: float, w_cat: float) -> dict:
    cfg: dict = {
        "merge_method": method,
        "models": [
            {"model": str(family / "ft_arith"), "parameters": {"weight": w_arith}},
            {"model": str(family / "ft_category"), "parameters": {"weight": w_cat}},
        ],
        "parameters": {"normalize": method == "linear"},
        "dtype": "float32",
    }
    if method == "task_arithmetic":
        cfg["base_model"] = str(family / "base")
    return cfg


def build_seeds(family: str | Path, out: str | Path, names: list[str] | None = None,
                force: bool = False) -> dict[str, Path]:
    """Merge the seeds into `out/<name>` (skipping finished ones) and return their folders."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    family, out = Path(family).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, Path] = {}
    for name in names or list(SEEDS):
        target = out / name
        if (target / "config.json").is_file() and not force:
            done[name] = target
            continue
        tmp = out / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        method, wa, wc = SEEDS[name]
        run_merge(MergeConfiguration.model_validate(seed_config(family, method, wa, wc)),
                  out_path=str(tmp),
                  options=MergeOptions(copy_tokenizer=True, lazy_unpickle=True,
                                       write_model_card=False, quiet=True))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # a finished folder only ever appears whole
        done[name] = target
    return done


def mixed_delta_model(family: str | Path, out: str | Path, seed: int = 5) -> Path:
    """base + a random mix of the two fine-tunes' deltas per tensor: a third relative whose
    delta follows neither fine-tune (for the candidate-kinship tests and bench)."""
    import torch
    from safetensors.torch import load_file, save_file

    family, out = Path(family), Path(out)
    shutil.copytree(family / "ft_arith", out)
    b, a, c = (load_file(f"{family / m}/model.safetensors")
               for m in ("base", "ft_arith", "ft_category"))
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name in b:
        x, y = (torch.rand(2, generator=gen) * 1.7 - 0.5).tolist()
        state[name] = (b[name] + x * (a[name] - b[name]) + y * (c[name] - b[name])).contiguous()
    save_file(state, str(out / "model.safetensors"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="models/tiny")
    parser.add_argument("--out", default="models/tiny_pool")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    for name, path in build_seeds(args.family, args.out, force=args.force).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
