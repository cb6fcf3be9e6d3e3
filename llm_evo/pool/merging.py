"""One pairwise merge: its mergekit config, and running it into the storage path.

Pool members are merged on the driver and written to disk because they are kept: the
top-k is merged again next round, and the final top-k is the result.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from llm_evo.pool.config import PoolSection


def pair_merge_config(section: PoolSection, a: str, b: str, base: str) -> dict[str, Any]:
    """The mergekit-yaml mapping that merges model paths `a` and `b`.

    slerp interpolates from `a` (its base_model) towards `b` by t; linear averages with
    weights `(1 - t, t)` (or `pool.weights`); task_arithmetic adds both deltas against the
    family's base with those weights.
    """
    method = section.merge_method
    if method == "slerp":
        cfg: dict[str, Any] = {
            "merge_method": "slerp",
            "base_model": a,
            "models": [{"model": a}, {"model": b}],
            "parameters": {"t": float(section.t)},
        }
    else:
        wa, wb = section.pair_weights
        cfg = {
            "merge_method": method,
            "models": [{"model": a, "parameters": {"weight": float(wa)}},
                       {"model": b, "parameters": {"weight": float(wb)}}],
            "parameters": {"normalize": method == "linear"},
        }
        if method == "task_arithmetic":
            cfg["base_model"] = base
    if section.dtype:
        cfg["dtype"] = section.dtype
    return cfg


def run_pair_merge(config: dict[str, Any], out: Path, *, trust_remote_code: bool = False,
                   allow_crimes: bool = False) -> float:
    """Merge into `out` (replaced if present) and return the seconds it took."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    try:
        run_merge(MergeConfiguration.model_validate(config), out_path=str(out),
                  options=MergeOptions(copy_tokenizer=True, trust_remote_code=trust_remote_code,
                                       allow_crimes=allow_crimes, lazy_unpickle=True,
                                       write_model_card=False, quiet=True))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return time.perf_counter() - started
