"""One pairwise merge's mergekit config.

The workers run it (a `Job` with `out_path`): pool members are written to the storage path
and kept, because the top-k is merged again next round and the final top-k is the result.
"""

from __future__ import annotations

from typing import Any

from llm_evo.config import PoolSection


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
