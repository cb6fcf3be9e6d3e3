"""Kinship of ties and dare_ties candidates, estimated on a fixed random coordinate sketch.

ties and dare_ties are elementwise nonlinear: each source delta is sparsified (ties keeps the
top `density` fraction of each tensor by magnitude; dare drops a random `1 - density` and
rescales by the L1 ratio), then a sign is elected per coordinate and only the agreeing
deltas are summed (and divided by their weight sum with normalize). No Gram matrix captures
that, so we sample coordinates once, in the same read as the Gram matrices, and apply the
method's elementwise math there:

- **Sketch.** Each tensor t contributes m_t coordinates drawn uniformly without replacement
  (m_t proportional to its size, at least 64, all of a tensor that small), each carrying
  v = [d_1 .. d_n, theta_base] and, for ties, the rank of |d_i| within its whole tensor, so
  "in the top k of the tensor" is decided exactly as mergekit's `magnitude` decides it.
- **dare's random drop** is emulated deterministically, by its expectation: the 2^n keep/drop
  patterns of the n models are enumerated with their probabilities (beyond 6 models, 64 fixed
  seeded draws), kept deltas rescaled by 1/density (mergekit rescales by the tensor's L1
  ratio, which concentrates there), giving the mean and the variance of the merged delta at
  each coordinate. Two real merges drop independently: their cross products use the means,
  and each norm adds its own variance. (A single emulated mask per genotype was tried first;
  on the tiny family a density of 0.003 keeps ~2 of 800 sampled coordinates, and its noise
  swamped the estimate.)
- **Estimator** (regression / difference estimator, as in survey sampling): in each block b
  (tensors sharing their parameters) the candidate's sketched delta is regressed on v,
  delta = v^T beta_b + e. The fitted part's moments are exact from the block Gram matrix,
  beta_c^T G_b beta_r; only the residuals' moments are estimated from the sample,
  sum_j (n_t / m_t) e_c(j) e_r(j). Where a merge is close to linear (high density, few sign
  conflicts) the residual is small and so is the error; where a tensor is sampled whole its
  part of the estimate is exact.

docs/kinship-search.md reports the measured error against real merged models.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.kinship.candidate import CandidateKinship, DeltaStats
from llm_evo.kinship.layout import TensorSlot
from llm_evo.kinship.stats import GramStats

if TYPE_CHECKING:
    import torch

    from llm_evo.genome import Genome

MIN_PER_TENSOR = 64
# Above this many elements, a tensor's magnitude ranks come from a 2**20-element subsample.
RANK_EXACT_MAX = 1 << 22
RANK_SUBSAMPLE = 1 << 20
CACHE_ENTRIES = 64
EXACT_PATTERNS_MAX = 6  # dare: enumerate all 2^n keep/drop patterns up to this many models
MC_DRAWS = 64


@dataclass
class Sketch:
    """Sampled coordinates of every compared tensor (float64), with inverse inclusion weights."""

    tensor: np.ndarray  # (m,) index into DeltaStats.names
    values: np.ndarray  # (m, n + 1): d_1 .. d_n, theta_base at the coordinate
    weight: np.ndarray  # (m,) numel_t / m_t
    numel: np.ndarray  # (T,) elements of each tensor
    rank: np.ndarray | None = None  # (m, n): elements of the tensor with larger |d_i|

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"tensor": self.tensor, "values": self.values, "weight": self.weight,
               "numel": self.numel}
        if self.rank is not None:
            out["rank"] = self.rank
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Sketch:
        return cls(arrays["tensor"], arrays["values"], arrays["weight"], arrays["numel"],
                   arrays.get("rank"))

    @property
    def size(self) -> int:
        return len(self.tensor)


class SketchBuilder:
    """Samples each tensor as it streams past (no second read of any file)."""

    def __init__(self, n_models: int, numels: Sequence[int], budget: int, *, seed: int = 0,
                 ranks: bool = False) -> None:
        total = max(sum(numels), 1)
        self.n = n_models
        self.seed = seed
        self.ranks = ranks
        self.numel = np.asarray(numels, dtype=np.int64)
        self.sizes = [min(int(n), max(MIN_PER_TENSOR, math.ceil(budget * n / total)))
                      for n in numels]
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []

    def add(self, t: int, base: torch.Tensor, models: Sequence[torch.Tensor]) -> None:
        import torch

        numel = int(self.numel[t])
        m = self.sizes[t]
        rng = np.random.default_rng([self.seed, t])
        idx = (np.arange(numel) if m >= numel
               else np.sort(rng.choice(numel, size=m, replace=False)))
        at = torch.from_numpy(idx)
        b = base.reshape(-1)[at].to(torch.float64)
        values = np.empty((len(idx), self.n + 1))
        values[:, self.n] = b.numpy()
        ranks = np.empty((len(idx), self.n)) if self.ranks else None
        for i, model in enumerate(models):
            values[:, i] = (model.reshape(-1)[at].to(torch.float64) - b).numpy()
            if ranks is not None:
                ranks[:, i] = _ranks(model, base, at, rng)
        weight = np.full(len(idx), numel / len(idx))
        self._parts.append((np.full(len(idx), t, dtype=np.int64), values, weight, ranks))

    def finish(self) -> Sketch:
        tensor, values, weight, ranks = zip(*self._parts, strict=True)
        return Sketch(np.concatenate(tensor), np.concatenate(values), np.concatenate(weight),
                      self.numel, np.concatenate(ranks) if self.ranks else None)


def _ranks(model: torch.Tensor, base: torch.Tensor, at: torch.Tensor,
           rng: np.random.Generator) -> np.ndarray:
    """How many elements of the tensor have a larger |delta| than each sampled one.

    Computed on float32 deltas, as mergekit's `magnitude` sorts them on the CPU.
    """
    import torch

    mag = (model.reshape(-1).float() - base.reshape(-1).float()).abs()
    numel = mag.numel()
    values = mag[at]
    if numel <= RANK_EXACT_MAX:
        ordered = torch.sort(mag).values
        above = numel - torch.searchsorted(ordered, values, right=True)
        return above.to(torch.float64).numpy()
    sub = torch.from_numpy(rng.choice(numel, size=RANK_SUBSAMPLE, replace=False))
    ordered = torch.sort(mag[sub]).values
    frac = 1.0 - torch.searchsorted(ordered, values, right=True).double() / RANK_SUBSAMPLE
    return (frac * numel).numpy()


class SketchKinship(CandidateKinship):
    """ties / dare_ties kinship: exact Gram moments of a per-block fit, sampled residuals."""

    exact = False

    def __init__(self, genome: Genome, slots: Sequence[TensorSlot], stats: DeltaStats,
                 regression: bool = True, seed: int = 0) -> None:
        super().__init__(genome, slots, stats)
        sk = stats.sketch
        if sk is None:
            raise ConfigError(f"kinship: {self.method} needs a coordinate sketch; rebuild "
                              "the statistics with sketch_size > 0")
        if self.method == "ties" and sk.rank is None:
            raise ConfigError("kinship: ties needs magnitude ranks in the sketch")
        self.seed = seed
        self.regression = regression
        self.dare = self.method == "dare_ties"
        self.normalize = genome.definition.effective_normalize
        # mergekit's defaults (the genome never sets them): dare rescales by L1, ties does not.
        self.rescale = self.dare
        # Coordinates sorted by (block, tensor): both become contiguous segments.
        block = self.block_of[sk.tensor]
        order = np.lexsort((sk.tensor, block))
        self.tensor = sk.tensor[order]
        self.block = block[order]
        self.x = sk.values[order]
        self.w = sk.weight[order]
        self.d = np.ascontiguousarray(self.x[:, : self.n].T)  # (n, m)
        if sk.rank is not None:
            # ties keeps the top k = max(1, floor(density * numel)) of a tensor by |d|:
            # rank < k  <=>  (rank + 1) / numel <= density, or rank == 0 (k >= 1).
            rank = sk.rank[order].T
            self.rank_frac = np.ascontiguousarray((rank + 1.0) / sk.numel[self.tensor])
            self.top = np.ascontiguousarray(rank == 0.0)
        self.block_starts = np.flatnonzero(np.r_[True, np.diff(self.block) != 0])
        if len(self.block_starts) != self.n_blocks:
            raise ConfigError("kinship: a block of the merge has no sketched coordinate")
        self.block_counts = np.diff(np.r_[self.block_starts, len(self.block)])
        # Q[:, j] = pinv(sqrt(w) X_b)[:, j] * sqrt(w_j): beta_b = sum_{j in b} Q[:, j] delta_j.
        # Everything per coordinate is stored model-major, (n + 1, m), for fast reductions.
        q = np.zeros_like(self.x)
        root = np.sqrt(self.w)
        ends = [*self.block_starts[1:], len(self.x)]
        for s, e in zip(self.block_starts, ends, strict=True):
            xs = self.x[s:e] * root[s:e, None]
            q[s:e] = np.linalg.pinv(xs, rcond=1e-10).T * root[s:e, None]
        self.q = np.ascontiguousarray(q.T)
        self.xt = np.ascontiguousarray(self.x.T)
        self._cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray, float]] = OrderedDict()

    @property
    def sketch_size(self) -> int:
        return len(self.x)

    def _expand(self, per_block: np.ndarray) -> np.ndarray:
        """(B, ...) block values -> one per coordinate (coordinates are sorted by block)."""
        return np.repeat(per_block, self.block_counts, axis=0)

    def _combine(self, weighted: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Sign election and (normalised) sum of weighted sparse deltas, (rows, m) -> (m,).

        mergekit: the majority sign is that of the sum (+ at 0); a delta counts when its sign
        equals it (a zero delta never does); the divisor is the counted models' weights.
        """
        total = weighted.sum(axis=0)
        mask = np.where(total >= 0.0, weighted > 0.0, weighted < 0.0)
        mixed = np.where(mask, weighted, 0.0).sum(axis=0)
        if self.normalize:
            divisor = np.where(mask, weight, 0.0).sum(axis=0)
            divisor[divisor == 0.0] = 1.0
            mixed /= divisor
        return mixed

    def deltas(self, genotype: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance over dare's random drop of the merged delta at every coordinate.

        ties is deterministic (variance 0). For dare_ties the 2^n keep/drop patterns of the n
        models are enumerated with their probabilities (n <= EXACT_PATTERNS_MAX; beyond, a
        fixed set of MC_DRAWS seeded draws), each kept delta rescaled by 1/density.
        """
        weight_b = self.block_params(genotype, "weight") * self.input_mask  # (B, n)
        density_b = self.block_params(genotype, "density")
        weight = self._expand(weight_b).T  # (n, m): model-major for fast sums over models
        if not self.dare:
            density = self._expand(density_b).T
            keep = (self.rank_frac <= density) | (self.top & (density > 0.0))
            weighted = np.where(keep | (density >= 1.0), self.d * weight, 0.0)
            mixed = self._combine(weighted, weight)
            return mixed, np.zeros_like(mixed)
        rho_b = np.clip(density_b, 0.0, 1.0)
        scale_b = np.where((rho_b > 0.0) & (rho_b < 1.0) & self.rescale,
                           1.0 / np.where(rho_b > 0.0, rho_b, 1.0), 1.0)
        weighted = self.d * weight * self._expand(scale_b).T
        mean = np.zeros(weighted.shape[1])
        second = np.zeros(weighted.shape[1])
        if self.n <= EXACT_PATTERNS_MAX:
            for bits in range(1, 1 << self.n):  # nothing kept: a zero delta, adds nothing
                kept = [i for i in range(self.n) if (bits >> i) & 1]
                mask = np.zeros(self.n, dtype=bool)
                mask[kept] = True
                prob_b = np.prod(np.where(mask, rho_b, 1.0 - rho_b), axis=1)
                if not prob_b.any():
                    continue
                prob = self._expand(prob_b)
                mixed = self._combine(weighted[kept], weight[kept])
                mean += prob * mixed
                second += prob * mixed * mixed
        else:
            rng = np.random.default_rng([self.seed, 7])
            rho = self._expand(rho_b).T
            for _ in range(MC_DRAWS):
                drop = rng.random(weighted.shape) >= rho
                mixed = self._combine(np.where(drop, 0.0, weighted), weight)
                mean += mixed / MC_DRAWS
                second += mixed * mixed / MC_DRAWS
        return mean, np.maximum(second - mean * mean, 0.0)

    def _fit(self, genotype: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(beta (B, n + 1), residual (m,), drop-noise energy) of one genotype, cached."""
        key = np.ascontiguousarray(genotype, dtype=np.float64).tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        delta, var = self.deltas(genotype)
        if self.regression:
            beta = np.add.reduceat(self.q * delta, self.block_starts, axis=1).T  # (B, n + 1)
            resid = delta - (self.xt * self._expand(beta).T).sum(axis=0)
        else:
            beta = np.zeros((self.n_blocks, self.n + 1))
            resid = delta
        fit = (beta, resid, float(np.einsum("j,j->", var, self.w)))
        self._cache[key] = fit
        if len(self._cache) > CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return fit

    def moments(self, genotypes: Sequence[np.ndarray]) -> GramStats:
        fits = [self._fit(np.asarray(g, dtype=np.float64)) for g in genotypes]
        beta = np.stack([f[0] for f in fits])
        resid = np.stack([f[1] for f in fits])
        # einsum's own loops, not BLAS: OpenBLAS threads spin on a busy machine, and turned
        # sub-millisecond products into 10+ ms ones in our measurements.
        cross = np.einsum("kbi,bij,lbj->kl", beta, self.gram, beta)
        cross += np.einsum("km,lm->kl", resid * self.w, resid)
        # dare: two merges drop independently, so the drop noise adds to each norm only.
        cross += np.diag([f[2] for f in fits])
        sums = np.einsum("kbi,bi->k", beta, self.sums) + np.einsum("km,m->k", resid, self.w)
        return GramStats(cross, sums, self.count)
