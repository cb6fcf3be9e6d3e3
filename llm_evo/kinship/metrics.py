"""Kinship metrics from Gram statistics: signed cosine, Pearson correlation, Euclidean distance.

Every function takes arrays shaped (..., k, k) / (..., k) / (...) so a batch of per-tensor
statistics is handled at once. Undefined values are NaN: cosine and Pearson need a delta that
is not all zero (Pearson: not constant); Euclidean distance is always defined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.kinship.stats import GramStats

METRICS: tuple[str, ...] = ("cs", "pcc", "ed")
METRIC_NAMES = {"cs": "cosine similarity", "pcc": "Pearson correlation", "ed": "Euclidean distance"}
# Below this fraction of the energy a variance or squared distance is rounding noise.
_NOISE = 1e-13


def parse_metrics(spec: str | Sequence[str], field: str = "--metrics") -> tuple[str, ...]:
    """Accept 'cs,pcc,ed', 'cs pcc ed' or a list of such strings; keep order, drop repeats."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    names = [m for part in parts for m in re.split(r"[,\s]+", part.strip().lower()) if m]
    if not names:
        raise ConfigError(f"{field}: no metric given (choose from {', '.join(METRICS)})")
    for m in names:
        if m not in METRICS:
            raise ConfigError(f"{field}: unknown metric {m!r} (choose from {', '.join(METRICS)})")
    return tuple(dict.fromkeys(names))


def _diag(gram: np.ndarray) -> np.ndarray:
    return np.diagonal(gram, axis1=-2, axis2=-1)


def cosine(gram: np.ndarray, abs_cosine: bool = False) -> np.ndarray:
    """Signed cosine of every pair; NaN where either delta is all zero."""
    norm = np.sqrt(_diag(gram))
    denom = norm[..., :, None] * norm[..., None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        cs = np.where(denom > 0, gram / np.where(denom > 0, denom, 1.0), np.nan)
    cs = np.clip(cs, -1.0, 1.0)
    return np.abs(cs) if abs_cosine else cs


def pearson(gram: np.ndarray, sums: np.ndarray, count: np.ndarray | int) -> np.ndarray:
    """Pearson correlation of every pair over all elements; NaN where a delta is constant."""
    n = np.asarray(count, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, sums / np.where(n > 0, n, 1.0), 0.0)
        cov = gram - sums[..., :, None] * mean[..., None, :]
        var = _diag(cov)
        defined = var > _NOISE * _diag(gram)
        sd = np.sqrt(np.where(defined, var, 1.0))
        r = cov / (sd[..., :, None] * sd[..., None, :])
    ok = defined[..., :, None] & defined[..., None, :]
    return np.where(ok, np.clip(r, -1.0, 1.0), np.nan)


def euclidean(gram: np.ndarray) -> np.ndarray:
    """||d_i - d_j|| of every pair, from sum(d_i^2) + sum(d_j^2) - 2 sum(d_i d_j)."""
    sq = _diag(gram)
    energy = sq[..., :, None] + sq[..., None, :]
    d2 = energy - 2.0 * gram
    d2 = np.where(d2 > _NOISE * energy, d2, 0.0)  # rounding can leave tiny negatives
    return np.sqrt(d2)


def metric_matrix(name: str, stats: GramStats, abs_cosine: bool = False) -> np.ndarray:
    """k x k matrix of one metric over all elements the statistics cover ("full" mode)."""
    return _batched(name, stats.gram, stats.sums, np.asarray(stats.count), abs_cosine)


def _batched(
    name: str, gram: np.ndarray, sums: np.ndarray, count: np.ndarray, abs_cosine: bool
) -> np.ndarray:
    if name == "cs":
        return cosine(gram, abs_cosine)
    if name == "pcc":
        return pearson(gram, sums, count)
    if name == "ed":
        return euclidean(gram)
    raise ConfigError(f"unknown metric {name!r} (choose from {', '.join(METRICS)})")


def split_matrix(
    name: str, stats: Iterable[GramStats], k: int, abs_cosine: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tensor metric averaged with element-count weights ("split" mode).

    Returns (average, left_out): tensors where the metric is undefined for a pair (an all-zero
    delta, e.g. a frozen layer) are left out of that pair's average and counted in left_out.
    """
    items = [s for s in stats if s.count > 0]
    if not items:
        return np.full((k, k), np.nan), np.zeros((k, k), dtype=int)
    gram = np.stack([s.gram for s in items])
    sums = np.stack([s.sums for s in items])
    count = np.array([s.count for s in items], dtype=np.float64)
    values = _batched(name, gram, sums, count, abs_cosine)
    finite = np.isfinite(values)
    weights = np.where(finite, count[:, None, None], 0.0)
    total = weights.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = np.where(
            total > 0, (np.where(finite, values, 0.0) * weights).sum(axis=0) / total, np.nan
        )
    return avg, (~finite).sum(axis=0)
