"""Large tensors merged a block of rows at a time, for merge methods that are elementwise.

mergekit merges one tensor at a time, and its task_arithmetic holds every model's delta of
that tensor at once plus two temporaries: (models + 2) x the tensor. For the largest tensor
(the embedding: 49,152 x 576 fp32 = 0.105 GiB on SmolLM2-135M, 0.5 GiB on a 7B Llama) that
transient was the whole excess of an in-memory worker's peak memory over its bound (issue
#15: 0.53 GiB at 4 inputs). mergekit does not block rows itself, so for the methods whose
output row i depends only on the inputs' row i with scalar per-model parameters (linear,
and task_arithmetic: no sparsification, which ranks a whole tensor) we call mergekit's own
merge task on row slices of the cached inputs (views, no copy) and hand each block to the
resident model as it comes. Every other method, and any tensor whose inputs differ in
shape (an embedding that mergekit would trim to the base's vocabulary), is merged whole.
Elementwise float arithmetic is the same on a slice as on the whole tensor, so the result
is bit for bit mergekit's (tests/evaluation/test_row_blocks.py checks it against
`mergekit-yaml`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

# Methods whose output rows depend only on the same rows of their inputs.
ROW_SEPARABLE = frozenset({"linear", "task_arithmetic"})
BLOCK_BYTES = 16 * 1024**2  # rows per block: each input's slice stays under this


def row_blocked_inputs(task: Any, load: Callable[[Any], Any],
                       block_bytes: int = BLOCK_BYTES) -> dict[str, Any] | None:
    """The cached inputs of a merge task worth merging in row blocks, by argument name, or
    None when the task must be merged whole (method, graph shape, size or input shapes)."""
    from mergekit.io.tasks import GatherTensors, LoadTensor
    from mergekit.merge_methods.task_adapter import ExecuteMergeMethodTask

    if not isinstance(task, ExecuteMergeMethodTask) or task.method_name not in ROW_SEPARABLE:
        return None
    gather = task.gather_tensors
    if not isinstance(gather, GatherTensors):
        return None
    loads = gather.arguments()
    if not loads or not all(isinstance(t, LoadTensor) for t in loads.values()):
        return None
    values = {key: load(t) for key, t in loads.items()}
    tensors = [v for v in values.values() if v is not None]
    if not tensors:
        return None
    first = tensors[0]
    if (first.ndim < 1 or not first.is_floating_point()
            or any(t.shape != first.shape or t.dtype != first.dtype for t in tensors)
            or first.numel() * first.element_size() <= 2 * block_bytes):
        return None
    return values


def row_blocks(task: Any, values: dict[str, Any], device: str,
               block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int, Any]]:
    """(first row, end row, merged block) for each block of rows of `task`'s output."""
    import torch

    first = next(v for v in values.values() if v is not None)
    rows = first.shape[0]
    row_bytes = max(1, first[0].numel() * first.element_size())
    step = max(1, block_bytes // row_bytes)
    with torch.no_grad():
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            sliced = {key: (None if v is None else v[r0:r1].to(device))
                      for key, v in values.items()}
            block = task.execute(tensors=task.gather_tensors.execute(**sliced))
            yield r0, r1, block
