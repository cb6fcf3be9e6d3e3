"""Kinship of merge candidates without merging them: per-tensor Gram statistics of the sources.

For linear and task_arithmetic, a candidate's delta against the base, in each tensor, is a
linear combination of the vectors v = [d_1 .. d_n, theta_base] (d_i = model_i - base):

    task_arithmetic:  merged - base = sum_i w_i d_i            (/ sum_i w_i with normalize)
    linear:           merged - base = sum_i w_i d_i + (sum_i w_i - 1) theta_base
                                      (sum_i (w_i / sum w) d_i with normalize)

so with a_c the coefficient vector of candidate c in block b (the tensors that share their
parameters), <delta_c, delta_r> = sum_b a_c,b^T G_b a_r,b, sum(delta_c) = sum_b a_c,b^T s_b,
and every metric of the kinship engine (cs, pcc, ed) follows exactly. slerp is exact too:
mergekit slerps each whole tensor, so its two coefficients depend only on the angle between
the two source tensors, which the per-tensor Gram gives. ties and dare_ties are not linear;
see `llm_evo.kinship.sketch`.

One streaming pass over the base and the n models (each tensor of each file read once, with
the kinship engine's `CheckpointReader` and `GramAccumulator`) gives the per-tensor Gram
matrices G_t = sum v v^T, the sums and the counts, and, in the same pass, the coordinate
sketch the nonlinear methods need.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.kinship.layout import TensorSlot, group_matrix
from llm_evo.kinship.metrics import metric_matrix
from llm_evo.kinship.stats import GramStats

if TYPE_CHECKING:
    from llm_evo.genome import Genome
    from llm_evo.kinship.sketch import Sketch

CACHE_VERSION = 1
# mergekit's task arithmetic leaves a weight sum this close to zero undivided.
GTA_DIVISOR_EPS = 1e-8
# mergekit's slerp: interpolate linearly above this |cosine|, and treat tiny norms as 1.
SLERP_DOT_THRESHOLD = 0.9995
SLERP_EPS = 1e-8


@dataclass
class DeltaStats:
    """Per-tensor float64 statistics of v = [d_1 .. d_n, theta_base] over one read of the models.

    gram[t] = sum over the elements of tensor t of v v^T, sums[t] = sum v, counts[t] = elements.
    """

    names: tuple[str, ...]
    gram: np.ndarray  # (T, n + 1, n + 1)
    sums: np.ndarray  # (T, n + 1)
    counts: np.ndarray  # (T,)
    sketch: Sketch | None = None
    bytes_read: int = 0
    file_bytes: int = 0
    elapsed_s: float = 0.0
    skipped: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def n_models(self) -> int:
        return self.gram.shape[1] - 1

    # ---- cache -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], key: str) -> None:
        """Write an .npz next to the run (atomically: a crash never leaves half a cache)."""
        arrays = {"names": np.array(self.names, dtype=str), "gram": self.gram,
                  "sums": self.sums, "counts": self.counts}
        if self.sketch is not None:
            arrays |= {f"sketch_{k}": v for k, v in self.sketch.arrays().items()}
        info = {"key": key, "version": CACHE_VERSION, "bytes_read": self.bytes_read,
                "file_bytes": self.file_bytes, "elapsed_s": self.elapsed_s,
                "skipped": list(self.skipped), "meta": self.meta}
        arrays["info"] = np.array(json.dumps(info))
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, target)

    @classmethod
    def load(cls, path: str | os.PathLike[str], key: str) -> DeltaStats | None:
        """The cached statistics if `path` holds them for `key`, else None."""
        from llm_evo.kinship.sketch import Sketch

        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(str(data["info"]))
                if info.get("key") != key or info.get("version") != CACHE_VERSION:
                    return None
                sketch_keys = {k[len("sketch_"):]: data[k] for k in data.files
                               if k.startswith("sketch_")}
                return cls(
                    names=tuple(str(n) for n in data["names"]), gram=data["gram"],
                    sums=data["sums"], counts=data["counts"],
                    sketch=Sketch.from_arrays(sketch_keys) if sketch_keys else None,
                    bytes_read=0, file_bytes=int(info["file_bytes"]),
                    elapsed_s=float(info["elapsed_s"]), skipped=tuple(info["skipped"]),
                    meta=dict(info.get("meta") or {}) | {"cached": True,
                                                         "built_bytes_read": info["bytes_read"]},
                )
        except (OSError, ValueError, KeyError):
            return None


def _stored_name(slot: TensorSlot, reader) -> str | None:  # noqa: ANN001 - CheckpointReader
    for name in (slot.name, *slot.aliases):
        if name in reader:
            return name
    return None


def build_delta_stats(
    models: Sequence[str],
    base: str,
    slots: Sequence[TensorSlot],
    *,
    sketch_size: int = 0,
    sketch_ranks: bool = False,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> DeltaStats:
    """One streaming pass: each tensor of the base and of each model is read once.

    Only the tensors a merge writes (`slots`) are compared, as the kinship engine compares a
    merged checkpoint with the base. A model path equal to the base path is read once.
    """
    import torch

    from llm_evo.kinship.reader import CheckpointReader
    from llm_evo.kinship.sketch import SketchBuilder
    from llm_evo.kinship.stats import GramAccumulator

    start = time.perf_counter()
    paths = list(dict.fromkeys([str(base), *map(str, models)]))
    readers = {p: CheckpointReader(p) for p in paths}
    base_reader = readers[str(base)]
    n = len(models)
    order = {name: i for i, name in enumerate(base_reader.names())}
    items: list[tuple[int, str]] = []
    skipped: list[str] = []
    for slot in slots:
        name = _stored_name(slot, base_reader)
        if name is None or any(name not in r for r in readers.values()):
            skipped.append(slot.name)
            continue
        infos = [r.info(name) for r in readers.values()]
        if len({i.shape for i in infos}) != 1 or not all(i.is_float for i in infos):
            raise ConfigError(
                f"kinship: tensor {name} differs in shape or dtype kind between the base and "
                "the models; kinship-aware search needs models of one architecture and vocab")
        items.append((order[name], name))
    items.sort()
    if not items:
        raise ConfigError("kinship: no tensor of the merge is present in the base and models")
    numels = [base_reader.info(name).numel for _, name in items]
    sketcher = (SketchBuilder(n, numels, sketch_size, seed=seed, ranks=sketch_ranks)
                if sketch_size > 0 else None)
    grams, sums, counts = [], [], []
    bytes_read = 0
    flip = np.ones(n + 1)
    flip[n] = -1.0  # the extra "model" is all zeros, so its delta is -theta_base
    with GramAccumulator(n + 1, workers=workers) as acc:
        for i, (_, name) in enumerate(items):
            if progress is not None:
                progress(i, len(items), name)
            tensors = {p: r.read(name) for p, r in readers.items()}
            bytes_read += sum(t.numel() * t.element_size() for t in tensors.values())
            b = tensors[str(base)]
            ms = [tensors[str(m)] for m in models]
            zeros = torch.zeros(b.shape, dtype=b.dtype)
            st = acc.add(name, b, [*ms, zeros])
            grams.append(st.gram * np.outer(flip, flip))
            sums.append(st.sums * flip)
            counts.append(st.count)
            if sketcher is not None:
                sketcher.add(i, b, ms)
            del tensors, b, ms, zeros
    for r in readers.values():
        r.close()
    file_bytes = sum(f.stat().st_size for r in readers.values() for f in r.files)
    return DeltaStats(
        names=tuple(name for _, name in items), gram=np.stack(grams), sums=np.stack(sums),
        counts=np.array(counts, dtype=np.int64),
        sketch=sketcher.finish() if sketcher is not None else None,
        bytes_read=bytes_read, file_bytes=file_bytes,
        elapsed_s=time.perf_counter() - start, skipped=tuple(skipped),
        meta={"cached": False, "models_read": len(readers)},
    )


class CandidateKinship:
    """Moments (cross products, sums, count) of candidates' merged deltas, from genotypes.

    `moments(genotypes)` returns GramStats over the K candidates, so `metric_matrix` of the
    kinship engine gives their K x K cs, pcc or ed exactly as it would for merged checkpoints.
    """

    exact = True

    def __init__(self, genome: Genome, slots: Sequence[TensorSlot], stats: DeltaStats,
                 per_tensor: bool = False) -> None:
        method = genome.definition.merge_method
        if not genome.base_model:
            raise ConfigError(
                f"kinship: merge_method {method} has no base in mergekit, but kinship is "
                "measured on deltas against one: set genome.base_model")
        if stats.n_models != len(genome.models):
            raise ConfigError("kinship: the cached statistics are for another set of models")
        by_name: dict[str, TensorSlot] = {}
        for slot in slots:
            for name in (slot.name, *slot.aliases):
                by_name.setdefault(name, slot)
        self.genome = genome
        self.stats = stats
        self.method = method
        self.n = len(genome.models)
        self.slots = [by_name[name] for name in stats.names]
        self.count = int(stats.counts.sum())
        # Blocks: tensors that every genotype gives the same parameters (one Gram each).
        keys = [(i,) if per_tensor else s.param_key for i, s in enumerate(self.slots)]
        uniq: dict[tuple, int] = {}
        self.block_of = np.array([uniq.setdefault(k, len(uniq)) for k in keys])
        first = [int(np.flatnonzero(self.block_of == b)[0]) for b in range(len(uniq))]
        rep = [self.slots[i] for i in first]
        self.group_weights = group_matrix(rep, genome.n_groups)  # (B, G)
        self.block_filter = np.array([s.filter_index for s in rep])
        n_blocks = len(uniq)
        self.gram = np.zeros((n_blocks, self.n + 1, self.n + 1))
        self.sums = np.zeros((n_blocks, self.n + 1))
        np.add.at(self.gram, self.block_of, stats.gram)
        np.add.at(self.sums, self.block_of, stats.sums)
        # The base listed among the models is mergekit's base input, never a weighted delta.
        self.input_mask = np.array([
            0.0 if (method in ("task_arithmetic", "ties", "dare_ties")
                    and m == genome.base_model) else 1.0
            for m in genome.models])

    @property
    def n_blocks(self) -> int:
        return len(self.block_filter)

    def block_params(self, genotype: np.ndarray, param: str) -> np.ndarray:
        """(B, M) value of `param` for every block and model, as mergekit resolves it."""
        x4 = self.genome.check(genotype)
        values = x4[:, :, :, self.genome.params.index(param)]  # (G, M, F)
        return np.einsum("bg,gmb->bm", self.group_weights, values[:, :, self.block_filter])

    def coefficients(self, genotype: np.ndarray) -> np.ndarray:
        """(B, n + 1): the candidate's delta in block b is coefficients[b] @ v."""
        w = self.block_params(genotype, "weight") * self.input_mask
        normalize = self.genome.definition.effective_normalize
        out = np.zeros((self.n_blocks, self.n + 1))
        total = w.sum(axis=1)
        if self.method == "linear":
            if normalize:
                out[:, : self.n] = w / total[:, None]
            else:
                out[:, : self.n] = w
                out[:, self.n] = total - 1.0
        elif self.method == "task_arithmetic":
            if normalize:
                total = np.where(np.abs(total) < GTA_DIVISOR_EPS, 1.0, total)
                w = w / total[:, None]
            out[:, : self.n] = w
        else:
            raise ConfigError(f"kinship: {self.method} is not a linear merge method")
        return out

    def moments(self, genotypes: Sequence[np.ndarray]) -> GramStats:
        """Cross products, sums and element count of the K candidates' deltas."""
        coef = np.stack([self.coefficients(np.asarray(g, dtype=np.float64))
                         for g in genotypes])  # (K, B, n + 1)
        # einsum's own loops, not BLAS (its threads spin on a busy machine); sizes are tiny.
        cross = np.einsum("kbi,bij,lbj->kl", coef, self.gram, coef)
        sums = np.einsum("kbi,bi->k", coef, self.sums)
        return GramStats(cross, sums, self.count)

    def matrix(self, metric: str, genotypes: Sequence[np.ndarray]) -> np.ndarray:
        """K x K kinship of the candidates (what the engine reports for their merges)."""
        return metric_matrix(metric, self.moments(genotypes))


class SlerpKinship(CandidateKinship):
    """slerp, exactly: each tensor is cos-weighted from its two sources' per-tensor angle.

    merged = c_a(t, angle) theta_a + c_b(t, angle) theta_b, with theta_a the slerp base
    (mergekit's `base_model`), so the delta is a combination of v with per-tensor coefficients.
    """

    def __init__(self, genome: Genome, slots: Sequence[TensorSlot], stats: DeltaStats) -> None:
        super().__init__(genome, slots, stats, per_tensor=True)
        base_index = genome.models.index(genome._slerp_base())
        self.pa = np.zeros(self.n + 1)
        self.pb = np.zeros(self.n + 1)
        self.pa[[base_index, self.n]] = 1.0  # theta_a = d_a + theta_base
        self.pb[[1 - base_index, self.n]] = 1.0
        g = self.gram
        aa = np.einsum("i,bij,j->b", self.pa, g, self.pa)
        bb = np.einsum("i,bij,j->b", self.pb, g, self.pb)
        ab = np.einsum("i,bij,j->b", self.pa, g, self.pb)
        na = np.sqrt(np.maximum(aa, 0.0))
        nb = np.sqrt(np.maximum(bb, 0.0))
        na = np.where(na > SLERP_EPS, na, 1.0)
        nb = np.where(nb > SLERP_EPS, nb, 1.0)
        dot = np.clip(ab / (na * nb), -1.0, 1.0)
        self.linear = np.abs(dot) > SLERP_DOT_THRESHOLD
        self.theta = np.arccos(np.where(self.linear, 0.0, dot))

    def coefficients(self, genotype: np.ndarray) -> np.ndarray:
        t = self.block_params(genotype, "t")[:, 0]
        sin = np.sin(self.theta)
        safe = np.where(self.linear, 1.0, sin)
        ca = np.where(self.linear, 1.0 - t, np.sin((1.0 - t) * self.theta) / safe)
        cb = np.where(self.linear, t, np.sin(t * self.theta) / safe)
        out = ca[:, None] * self.pa + cb[:, None] * self.pb
        out[:, self.n] -= 1.0
        return out


def candidate_kinship(genome: Genome, slots: Sequence[TensorSlot], stats: DeltaStats
                      ) -> CandidateKinship:
    """The kinship model for the genome's merge method."""
    method = genome.definition.merge_method
    if method in ("linear", "task_arithmetic"):
        return CandidateKinship(genome, slots, stats)
    if method == "slerp":
        if len(genome.models) != 2:
            raise ConfigError("kinship: slerp over more than 2 models is not supported")
        return SlerpKinship(genome, slots, stats)
    if method in ("ties", "dare_ties"):
        from llm_evo.kinship.sketch import SketchKinship

        return SketchKinship(genome, slots, stats)
    raise ConfigError(f"kinship: merge_method {method} is not supported")


def needs_sketch(method: str) -> bool:
    return method in ("ties", "dare_ties")
