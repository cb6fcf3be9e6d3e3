"""Float64 sufficient statistics of weight deltas, accumulated a chunk at a time.

For k delta vectors d_1..d_k over the same n elements, the Gram matrix G_ij = sum(d_i * d_j),
the sums s_i = sum(d_i) and n determine every pairwise cosine, Pearson correlation and Euclidean
distance. They add up across tensors, so one pass over a checkpoint gives the metrics of every
pair of models, for the whole model or for any grouping of its tensors.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llm_evo.errors import ConfigError

if TYPE_CHECKING:
    import torch

# Elements per chunk on the CPU: (k + 1) float64 rows of this length stay in the L2/L3 cache.
CPU_CHUNK = 1 << 18
GPU_CHUNK = 1 << 24


@dataclass
class GramStats:
    """Sum of d_i*d_j (k x k), sum of d_i (k), and the element count n, all exact-order float64."""

    gram: np.ndarray
    sums: np.ndarray
    count: int

    @classmethod
    def zeros(cls, k: int) -> GramStats:
        return cls(np.zeros((k, k)), np.zeros(k), 0)

    @property
    def k(self) -> int:
        return len(self.sums)

    def __add__(self, other: GramStats) -> GramStats:
        return GramStats(self.gram + other.gram, self.sums + other.sums, self.count + other.count)

    def subset(self, indices: Sequence[int]) -> GramStats:
        """Statistics of a subset of the k deltas (e.g. one pair)."""
        idx = np.asarray(indices)
        return GramStats(self.gram[np.ix_(idx, idx)].copy(), self.sums[idx].copy(), self.count)

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.gram).all() and np.isfinite(self.sums).all())

    @staticmethod
    def total(stats: Iterable[GramStats], k: int) -> GramStats:
        out = GramStats.zeros(k)
        for s in stats:
            out = out + s
        return out


def group_stats(
    tensors: Mapping[str, GramStats], key: Callable[[str], Hashable | None], k: int
) -> dict[Hashable, GramStats]:
    """Sum per-tensor statistics into buckets `key(name)`; a key of None leaves the tensor out."""
    buckets: dict[Hashable, GramStats] = {}
    for name, st in tensors.items():
        bucket = key(name)
        if bucket is not None:
            buckets[bucket] = buckets.get(bucket, GramStats.zeros(k)) + st
    return buckets


class GramAccumulator:
    """Streams tensors of k models (and their base) into float64 Gram statistics of the deltas.

    `add(name, base, models)` computes d_i = models[i] - base chunk by chunk in float64, so a
    tensor is never copied whole, and records the tensor's statistics under `tensors[name]` and
    under `buckets[key(name)]` (the key function picks the block: a layer, a layer group, a
    filter; None skips the bucket). Use it as a context manager so the worker threads stop.
    """

    def __init__(
        self,
        k: int,
        key: Callable[[str], Hashable | None] | None = None,
        *,
        low_precision: bool = False,
        device: str = "cpu",
        workers: int | None = None,
        labels: Sequence[str] | None = None,
        chunk: int | None = None,
    ) -> None:
        if k < 1:
            raise ConfigError(f"kinship needs at least one model besides the base, got {k}")
        self.k = k
        self.key = key
        self.low_precision = low_precision
        self.device = _check_device(device)
        on_cpu = self.device == "cpu"
        self.chunk = chunk or (CPU_CHUNK if on_cpu else GPU_CHUNK)
        self.workers = max(1, workers if workers is not None else min(8, os.cpu_count() or 1))
        if not on_cpu:
            self.workers = 1
        self.labels = list(labels) if labels else ["base", *(f"model {i + 1}" for i in range(k))]
        self.tensors: dict[str, GramStats] = {}
        self.buckets: dict[Hashable, GramStats] = {}
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._saved_threads: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> GramAccumulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        if self._saved_threads is not None or self.device != "cpu":
            return
        import torch

        # Our threads split the work. torch's intra-op threads would contend with them, and on
        # a busy machine OpenMP's spinning makes small ops up to 50x slower.
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(self.workers - 1, thread_name_prefix="kinship")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._saved_threads is not None:
            import torch

            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    # -- accumulation ---------------------------------------------------------------------
    @property
    def total(self) -> GramStats:
        """Statistics over every tensor added so far (the "full" vector)."""
        return GramStats.total(self.tensors.values(), self.k)

    def add(
        self, name: str, base: torch.Tensor | None, models: Sequence[torch.Tensor]
    ) -> GramStats:
        """Add one tensor: `base` and each of `models` must have the same number of elements.

        Any float dtype works (bf16, fp16, fp32, ...); base None means `models` are deltas.
        """
        if len(models) != self.k:
            raise ValueError(f"expected {self.k} model tensors for {name}, got {len(models)}")
        flats = [_flat(m) for m in models]
        flat_base = _flat(base) if base is not None else None
        n = flats[0].numel()
        if any(f.numel() != n for f in [*flats, *([flat_base] if base is not None else [])]):
            raise ValueError(f"{name}: the tensors differ in size")
        scale = self._quant_scale(flat_base, flats, n) if self.low_precision else None
        gram, sums = self._run(
            lambda s, e, g, sm: self._chunk(flat_base, flats, s, e, scale, g, sm), n
        )
        stats = GramStats(gram, sums, n)
        if not stats.is_finite():
            self._raise_non_finite(name, [base, *models])
        self.record(name, stats)
        return stats

    def add_deltas(self, name: str, deltas: Sequence[torch.Tensor]) -> GramStats:
        """Add deltas the caller already has (e.g. from an in-memory merge), one per model."""
        return self.add(name, None, deltas)

    def record(self, name: str, stats: GramStats) -> None:
        """Keep one tensor's statistics (from `add`, or from the torch-free pass in fast.py)."""
        if name in self.tensors:
            raise ValueError(f"tensor {name} was added twice")
        self.tensors[name] = stats
        bucket = self.key(name) if self.key is not None else None
        if bucket is not None:
            self.buckets[bucket] = self.buckets.get(bucket, GramStats.zeros(self.k)) + stats

    def _raise_non_finite(self, name: str, tensors: Sequence[torch.Tensor]) -> None:
        import torch

        for label, t in zip(self.labels, tensors, strict=False):
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ConfigError(f"{label}: tensor {name} contains NaN or inf")
        raise ConfigError(f"tensor {name}: its delta overflows float64")

    # -- chunked work ---------------------------------------------------------------------
    def _run(self, fn: Callable, n: int, reduce_max: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Apply fn to chunk ranges split across workers; combine the workers' (k x k, k) parts."""
        import torch

        bounds = list(range(0, n, self.chunk)) + [n] if n else [0, 0]
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        parts = min(self.workers, len(spans))
        # Workers pull chunks from one shared iterator (next() on it is atomic under the GIL),
        # so a thread that the OS preempts does not hold the others up at the end.
        queue = iter(spans)

        def work() -> tuple[torch.Tensor, torch.Tensor]:
            g = torch.zeros((self.k, self.k), dtype=torch.float64, device=self.device)
            sm = torch.zeros(self.k, dtype=torch.float64, device=self.device)
            for s, e in queue:
                fn(s, e, g, sm)
            return g, sm

        self._start()
        futures = [self._pool.submit(work) for _ in range(parts - 1)] if parts > 1 else []
        gram, sums = work()  # the calling thread takes a share too
        for fut in futures:
            g, sm = fut.result()
            gram += g
            if reduce_max:
                torch.maximum(sums, sm, out=sums)
            else:
                sums += sm
        return gram.cpu().numpy(), sums.cpu().numpy()

    def _buffer(self, rows: int) -> torch.Tensor:
        """A per-thread (rows, chunk) float64 scratch buffer, reused across chunks."""
        import torch

        buf = getattr(self._local, "buf", None)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty((rows, self.chunk), dtype=torch.float64, device=self.device)
            self._local.buf = buf
        return buf

    def _deltas(
        self, flat_base: torch.Tensor | None, flats: Sequence[torch.Tensor], s: int, e: int
    ) -> torch.Tensor:
        """float64 deltas of elements [s, e) as a (k, e - s) view of the scratch buffer."""
        m = e - s
        buf = self._buffer(self.k + 1)
        d = buf[: self.k, :m]
        for i, f in enumerate(flats):
            d[i].copy_(f[s:e])
        if flat_base is not None:
            b = buf[self.k, :m]
            b.copy_(flat_base[s:e])
            d.sub_(b)
        return d

    def _chunk(self, flat_base, flats, s, e, scale, g, sm) -> None:  # noqa: ANN001 - hot path
        d = self._deltas(flat_base, flats, s, e)
        if scale is not None:
            inv, step = scale
            d.mul_(inv).round_().clamp_(-127, 127).mul_(step)
        g.addmm_(d, d.T)
        sm.add_(d.sum(dim=1))

    def _quant_scale(self, flat_base, flats, n: int):  # noqa: ANN001, ANN202
        """Per-model absmax of this tensor's delta, as (127/absmax, absmax/127) columns."""
        import torch

        def absmax(s: int, e: int, g: torch.Tensor, sm: torch.Tensor) -> None:
            d = self._deltas(flat_base, flats, s, e)
            torch.maximum(sm, d.abs().amax(dim=1), out=sm)

        _, amax = self._run(absmax, n, reduce_max=True) if n else (None, np.zeros(self.k))
        amax_t = torch.as_tensor(amax, dtype=torch.float64, device=self.device).unsqueeze(1)
        step = amax_t / 127.0
        inv = torch.where(amax_t > 0, 127.0 / amax_t.clamp_min(1e-300), torch.zeros_like(amax_t))
        return inv, step


def _flat(t: torch.Tensor) -> torch.Tensor:
    return (t if t.is_contiguous() else t.contiguous()).reshape(-1)


def _check_device(device: str) -> str:
    device = str(device)
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d+)?", device):
        raise ConfigError(f"--device: expected cpu or cuda[:N], got {device!r}")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return device
