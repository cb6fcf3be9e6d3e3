"""The CPU pass without torch: safetensors bytes read with `pread` into small buffers.

Why: `import torch` alone costs 1.5 s, three to four times what `cat` needs to read a pair
of 1 GB checkpoints, and mapping each tensor anew costs page faults on every byte. Here each
worker thread reads a chunk of every checkpoint at the same element range into buffers that
stay in its cache and folds it into float64 Gram statistics. A chunk is touched once in RAM;
everything after the copy out of the page cache runs in cache.

Two kernels do the folding, with the same numbers (bf16 / fp16 deltas and their products are
exact in float64; only the order of the float64 sums differs):
- `c`: `_gram.c`, built at install time where a C compiler is found. One pass over the raw
  bytes decodes, subtracts and accumulates in registers, with the GIL released.
- `numpy`: five numpy calls per chunk (decode to float32, subtract, widen to float64, sum,
  dot), three times the arithmetic, twice the whole pass. Used where `_gram` was not built.
`LLM_EVO_KINSHIP_KERNEL=numpy` (or `c`) picks one; the default takes `c` where it exists.

Used by `stream_gram` when every checkpoint is safetensors, the device is the CPU, and no
`--low-precision` quantisation is asked for; the torch accumulator handles the rest.
Chunks of all tensors are spread over the threads together, so small tensors (norms, biases)
never make threads wait for each other.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.kinship.reader import TensorInfo
from llm_evo.kinship.stats import GramStats

try:  # built at install time where a C compiler was found (setup.py); tiny to import
    from llm_evo.kinship import _gram
except ImportError:
    _gram = None

# Elements per chunk over all k + 1 rows, as measured fastest on the bench's 1 GB models.
# numpy: rows of raw, float32 and float64 buffers per thread; about 384 Ki elements (fewer
# numpy calls per byte keeps the GIL free, smaller chunks stay in cache): 128 Ki for a
# pair, 64 Ki for 4 models. C: only the raw rows, and fewer calls still help: 512 Ki for a
# pair, 256 Ki for 4 models (at most 6 MB of buffer per thread).
CHUNK_ELEMENTS = {"numpy": 3 << 17, "c": 3 << 19}


def chunk_size(k: int, kernel: str = "numpy") -> int:
    """A power of two near CHUNK_ELEMENTS[kernel] / (k + 1), in [16 Ki, 512 Ki]."""
    return 1 << max(14, min(19, (CHUNK_ELEMENTS[kernel] // (k + 1)).bit_length() - 1))


DECODED = ("bfloat16", "float16", "float32")  # the stored dtypes this pass reads
CODES = {"bfloat16": 0, "float16": 1, "float32": 2}  # _gram.c's dtype codes


def kernel(k: int) -> str:
    """`c` or `numpy`: LLM_EVO_KINSHIP_KERNEL where set, else `c` where `_gram` was built
    (and takes k models)."""
    want = os.environ.get("LLM_EVO_KINSHIP_KERNEL", "auto").strip().lower() or "auto"
    if want not in ("auto", "c", "numpy"):
        raise ConfigError(f"LLM_EVO_KINSHIP_KERNEL={want}: expected auto, c or numpy")
    if want == "numpy":
        return "numpy"
    if _gram is not None and k <= _gram.MAXK:
        return "c"
    if want == "c":
        if _gram is None:
            raise ConfigError("LLM_EVO_KINSHIP_KERNEL=c, but llm_evo.kinship._gram was not "
                              "built; reinstall with a C compiler")
        raise ConfigError(f"LLM_EVO_KINSHIP_KERNEL=c: the kernel takes at most {_gram.MAXK} "
                          f"models, not {k}")
    return "numpy"


def supports(infos: Sequence[TensorInfo]) -> bool:
    """Whether this pass can read these tensors (safetensors with a known offset, a dtype
    it decodes)."""
    return all(i.offset is not None and i.dtype in DECODED for i in infos)


class _Scratch:
    """One thread's buffers, reused for every chunk: one row per checkpoint, so a chunk is
    decoded, subtracted and widened in one numpy call each (few calls, little GIL). The C
    kernel needs only the raw rows."""

    def __init__(self, k: int, chunk: int, numpy_kernel: bool) -> None:
        self.raw = np.empty((k + 1, chunk * 4), dtype=np.uint8)
        if numpy_kernel:
            self.f32 = np.empty((k + 1, chunk), dtype=np.float32)
            self.d32 = np.empty((k, chunk), dtype=np.float32)
            self.d64 = np.empty((k, chunk), dtype=np.float64)


def _decode(raw: np.ndarray, dtype: str, m: int, out: np.ndarray) -> np.ndarray:
    """m values per row of `raw` (little-endian bytes, 1-D or one row per checkpoint) as
    float32, in `out` where a copy is needed."""
    if dtype == "bfloat16":  # bf16 is the top half of a float32
        u32 = out[..., :m].view(np.uint32)
        # Widen, then shift in place: two simple loops beat one casting shift by 20 %.
        np.copyto(u32, raw[..., : 2 * m].view("<u2"))
        np.left_shift(u32, 16, out=u32)
        return out[..., :m]
    if dtype == "float16":
        np.copyto(out[..., :m], raw[..., : 2 * m].view("<f2"))
        return out[..., :m]
    return raw[..., : 4 * m].view("<f4")


class _File:
    """An open file descriptor shared by the threads (`pread` needs no seek position)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)

    def read_into(self, buf: np.ndarray, offset: int, name: str) -> None:
        view = memoryview(buf)
        got = 0
        while got < len(view):
            n = os.preadv(self.fd, [view[got:]], offset + got)
            if n <= 0:
                raise ConfigError(f"{self.path}: file ends inside tensor {name} (truncated?)")
            got += n

    def close(self) -> None:
        os.close(self.fd)


def gram_pass(
    items: Sequence[tuple[str, int]],
    infos: Sequence[Sequence[TensorInfo]],
    k: int,
    *,
    labels: Sequence[str],
    workers: int,
    chunk: int | None = None,
    on_tensor: Callable[[str, GramStats], None],
) -> str:
    """Statistics of each item (name, elements to compare); `infos[t]` is (base, model 1..k).

    `on_tensor(name, stats)` is called once per tensor, in `items` order, after all its
    chunks are in. Returns the kernel that did the arithmetic (`c` or `numpy`). Raises
    ConfigError naming the tensor and checkpoint on NaN or inf.
    """
    kind = kernel(k)
    chunk = chunk or chunk_size(k, kind)
    fold = _fold_numpy if kind == "numpy" else _fold_c
    files: dict[str, _File] = {}
    try:
        for row in infos:
            for info in row:
                key = str(info.file)
                if key not in files:
                    files[key] = _File(key)
        spans = [(t, s, min(s + chunk, n)) for t, (_, n) in enumerate(items)
                 for s in range(0, n, chunk)]
        queue = iter(spans)
        lock = threading.Lock()

        def work() -> dict[int, tuple[np.ndarray, np.ndarray]]:
            scratch = _Scratch(k, chunk, fold is _fold_numpy)
            parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            while True:
                with lock:  # next() on a plain iterator is not guaranteed atomic
                    span = next(queue, None)
                if span is None:
                    return parts
                t, s, e = span
                g, sm = parts.get(t) or parts.setdefault(t, (np.zeros((k, k)), np.zeros(k)))
                _read(scratch, items[t][0], infos[t], files, s, e)
                fold(scratch, infos[t], e - s, k, g, sm)

        threads = max(1, min(workers, len(spans)))
        # Our threads split the work; BLAS threads inside np.dot would fight them, and on a
        # busy machine OpenBLAS's spinning made this pass 20x slower in our measurements.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            if threads > 1:
                with ThreadPoolExecutor(threads - 1, thread_name_prefix="kinship") as pool:
                    futures = [pool.submit(work) for _ in range(threads - 1)]
                    results = [work(), *(f.result() for f in futures)]
            else:
                results = [work()]
    finally:
        for f in files.values():
            f.close()
    for t, (name, n) in enumerate(items):
        gram, sums = np.zeros((k, k)), np.zeros(k)
        for parts in results:
            if t in parts:
                gram += parts[t][0]
                sums += parts[t][1]
        gram = np.triu(gram) + np.triu(gram, 1).T  # only i <= j was accumulated
        stats = GramStats(gram, sums, n)
        if not stats.is_finite():
            _raise_non_finite(name, n, infos[t], labels)
        on_tensor(name, stats)
    return kind


def _read(scratch: _Scratch, name: str, row: Sequence[TensorInfo], files: dict[str, _File],
          s: int, e: int) -> None:
    """Elements s..e of the tensor from every checkpoint, one raw row each."""
    for j, info in enumerate(row):
        size = info.element_size
        files[str(info.file)].read_into(scratch.raw[j, : (e - s) * size],
                                        info.offset + s * size, name)


def _fold_c(scratch: _Scratch, row: Sequence[TensorInfo], m: int, k: int, g: np.ndarray,
            sm: np.ndarray) -> None:
    """One call into _gram.c (the GIL is released while it runs)."""
    _gram.accumulate(scratch.raw, scratch.raw.shape[1], bytes(CODES[i.dtype] for i in row), m,
                     g, sm)


def _fold_numpy(scratch: _Scratch, row: Sequence[TensorInfo], m: int, k: int, g: np.ndarray,
                sm: np.ndarray) -> None:
    """The same statistics with numpy, where _gram.c was not built."""
    dtypes = {info.dtype for info in row}
    if len(dtypes) == 1:
        values = _decode(scratch.raw, row[0].dtype, m, scratch.f32)
    else:  # checkpoints stored in different dtypes: one row at a time
        values = np.stack([_decode(scratch.raw[j], info.dtype, m, scratch.f32[j])
                           for j, info in enumerate(row)])
    d = scratch.d64[:, :m]
    if "float32" in dtypes:  # float32 inputs: subtract in float64, as the reference does
        np.subtract(values[1:], values[0], out=d, dtype=np.float64)
    else:  # bf16 / fp16 differences fit float32's 24-bit significand: exact, and faster
        d32 = scratch.d32[:, :m]
        np.subtract(values[1:], values[0], out=d32)
        np.copyto(d, d32)
    sm += np.add.reduce(d, axis=1)
    for i in range(k):
        di = d[i]
        for j in range(i, k):
            g[i, j] += np.dot(di, d[j])


def _raise_non_finite(name: str, n: int, row: Sequence[TensorInfo],
                      labels: Sequence[str]) -> None:
    """Which checkpoint holds the NaN or inf: read that tensor once more, this time whole."""
    for info, label in zip(row, labels, strict=True):
        size = info.element_size
        raw = np.empty(n * size, dtype=np.uint8)
        f = _File(str(info.file))
        try:
            f.read_into(raw, info.offset, name)
        finally:
            f.close()
        values = _decode(raw, info.dtype, n, np.empty(n, dtype=np.float32))
        if not np.isfinite(values).all():
            raise ConfigError(f"{label}: tensor {name} contains NaN or inf")
    raise ConfigError(f"tensor {name}: its delta overflows float64")
