"""In-memory merges: mergekit computes each merged tensor, we copy it into a resident model.

mergekit 0.1.5's own in-memory route (`MergePlanner.plan_in_memory` -> `ReturnTensor`)
cannot even be built under pydantic 2.14 (`TypeError: Can't instantiate abstract class
Task[Tensor]`: `ReturnTensor.tensor_task` is typed with a parametrised abstract generic).
So we plan with `plan_to_disk`, whose `SaveTensor` tasks type their input as a plain
`Task`, and never run the writer: we hand each `SaveTensor.tensor_task` (the merge
method's output for one tensor) to `mergekit.graph.Executor` as a target and collect
the yielded tensors. Names come from mergekit's architecture tables, so this works for
every architecture mergekit knows, with no hard-coded q/k/v.

Input tensors are read from disk once per worker and kept (on the GPU while memory
allows, else on the CPU); each candidate then costs only its arithmetic and one copy per
parameter into the resident model. Large tensors of elementwise methods are merged a block
of rows at a time (row_blocks.py), so a merge's transient memory stays small.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llm_evo.evaluation.row_blocks import BLOCK_BYTES, row_blocked_inputs, row_blocks

GIB = 1024**3


@dataclass
class MergedTensor:
    """One merged tensor and every name it may go by in a model (aliases, tied names)."""

    name: str
    names: tuple[str, ...]
    optional: bool
    tensor: Any  # torch.Tensor | None
    rows: tuple[int, int] | None = None  # a block of rows of the tensor, not all of it


class InputCache:
    """Input tensors (mergekit `LoadTensor` tasks) read once per worker and kept.

    On a CUDA device they stay on the GPU until a budget (free memory at the first load,
    less a reserve for the resident model's activations) is spent, then on the CPU.
    """

    def __init__(self, device: str, policy: str = "auto", reserve_fraction: float = 0.3):
        if policy not in ("auto", "cpu"):
            raise ValueError(f"input_cache must be 'auto' or 'cpu', not {policy!r}")
        self.device = device
        self.policy = policy
        self.reserve_fraction = reserve_fraction
        self._store: dict[Any, Any] = {}
        self._budget: int | None = None
        self._lock = threading.Lock()
        self.bytes_gpu = 0
        self.bytes_cpu = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, task: Any) -> Any:
        with self._lock:
            if task in self._store:
                return self._store[task]
            value = task.execute()
            if value is not None:
                value = self._place(value)
            self._store[task] = value
            return value

    def _place(self, value: Any) -> Any:
        if self.policy == "auto" and self.device.startswith("cuda"):
            import torch

            if self._budget is None:
                free, total = torch.cuda.mem_get_info(torch.device(self.device))
                self._budget = int(free - max(2 * GIB, self.reserve_fraction * total))
            size = value.numel() * value.element_size()
            if size <= self._budget:
                self._budget -= size
                self.bytes_gpu += size
                return value.to(self.device)
        self.bytes_cpu += value.numel() * value.element_size()
        return value


class InMemoryMerger:
    """Turns a mergekit config into merged tensors with mergekit's planner and executor."""

    def __init__(self, options: Any, math_device: str, cache: InputCache,
                 block_bytes: int = BLOCK_BYTES):
        self.options = options
        self.block_bytes = block_bytes
        self.math_device = math_device
        self.cache = cache
        self._configs: dict[Any, Any] = {}

    def tensors(self, merge_config: dict[str, Any]) -> Iterator[MergedTensor]:
        """Merged tensors one by one, as the executor produces them (nothing kept after)."""
        from mergekit.graph import Executor, TaskUniverse
        from mergekit.io.tasks import LoadTensor

        saves = self._plan(merge_config)
        if self.options.random_seed is not None:  # what run_merge does: DARE's masks
            from transformers.trainer_utils import set_seed

            set_seed(self.options.random_seed)
        whole = []
        for save in saves:
            values = row_blocked_inputs(save.tensor_task, self.cache.get, self.block_bytes)
            if values is None:
                whole.append(save)
                continue
            for r0, r1, block in row_blocks(save.tensor_task, values, self.math_device,
                                            self.block_bytes):
                yield MergedTensor(save.tensor_name, _names(save), save.optional,
                                   _cast(block, save.dtype), rows=(r0, r1))
        saves = whole
        if not saves:
            return
        targets = [s.tensor_task for s in saves]
        universe = TaskUniverse(targets)
        handles = [universe.add_task(t) for t in targets]
        by_task: dict[int, list[Any]] = {}
        for handle, save in zip(handles, saves, strict=True):
            by_task.setdefault(id(handle.task()), []).append(save)
        cached = {
            universe.get_handle(task): self.cache.get(task)
            for task in universe.tasks
            if isinstance(task, LoadTensor)
        }
        executor = Executor(handles, math_device=self.math_device,
                            storage_device=self.math_device, cached_values=cached)
        for task, value in executor.run(quiet=True):
            for save in by_task.get(id(task), ()):
                yield MergedTensor(save.tensor_name, _names(save), save.optional,
                                   _cast(value, save.dtype))

    def staged(self, merge_config: dict[str, Any], device: str | None = None
               ) -> list[MergedTensor]:
        """All merged tensors at once (a second copy of the model), e.g. to merge the next
        candidate while the resident model is busy with the current one."""
        out = []
        for item in self.tensors(merge_config):
            tensor = item.tensor
            if tensor is not None:
                if device is not None:
                    tensor = tensor.to(device)
                elif tensor.is_cuda and not _fits_on_gpu(tensor):
                    tensor = tensor.cpu()  # a staged copy must never starve the evaluation
                item.tensor = tensor
            out.append(item)
        return out

    def _plan(self, merge_config: dict[str, Any]) -> list[Any]:
        from mergekit.architecture import get_architecture_info
        from mergekit.config import MergeConfiguration
        from mergekit.io.tasks import LoaderCache, SaveTensor
        from mergekit.plan import MergePlanner

        config = MergeConfiguration.model_validate(merge_config)
        if not config.models and not config.slices and not config.modules:
            raise ValueError("the merge config names no models")
        LoaderCache().setup(options=self.options)  # per thread: LoaderCache is thread-local
        arch = get_architecture_info(config, self.options)
        donor = config.base_model or config.referenced_models()[0]
        if donor not in self._configs:
            self._configs[donor] = donor.config(trust_remote_code=self.options.trust_remote_code)
        planner = MergePlanner(config, arch, options=self.options,
                               out_model_config=self._configs[donor])
        # os.devnull: the writer task is never run; if it ever were, it would fail loudly.
        planned = planner.plan_to_disk(out_path=os.devnull)
        return [t for t in planned if isinstance(t, SaveTensor)]


def _cast(tensor: Any, dtype: str | None) -> Any:
    """A merged tensor in the dtype its SaveTensor asks for (what mergekit would write)."""
    if tensor is None or not dtype:
        return tensor
    from mergekit.common import dtype_from_name

    target = dtype_from_name(dtype)
    return tensor if tensor.dtype == target else tensor.to(target)


def trim_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc `malloc_trim`), once a merge or an
    evaluation has freed its temporaries. glibc keeps freed blocks of up to 32 MiB in the
    heap for reuse, and an in-memory worker's resident set grew by ~0.1 GiB over its first
    candidates that way (bench/worker_memory.py), which issue #15's memory bound does not
    leave room for. A no-op where the C library is not glibc."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        try:
            _LIBC = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC(0)


_LIBC: Any = None


def _fits_on_gpu(tensor: Any, headroom: int = 2 * GIB) -> bool:
    """Whether keeping this (already allocated) tensor on its GPU leaves `headroom` free."""
    import torch

    free, _ = torch.cuda.mem_get_info(tensor.device)
    return free > headroom


def _names(save: Any) -> tuple[str, ...]:
    weight = getattr(save.tensor_task, "output_weight", None)
    names = [save.tensor_name]
    if weight is not None:
        names += [*(weight.aliases or ()), *(weight.tied_names or ())]
    return tuple(dict.fromkeys(names))


def donor_of(merge_config: dict[str, Any]) -> str:
    """The model whose architecture and tokenizer the merge's output has (mergekit's rule)."""
    from mergekit.config import MergeConfiguration

    config = MergeConfiguration.model_validate(merge_config)
    donor = config.base_model or config.referenced_models()[0]
    # Its weights are overwritten, so a `path@revision+lora` donor loads as its bare path.
    return donor.model.path


def output_layers(merge_config: dict[str, Any]) -> int | None:
    """The merge's layer count when its slices say it (a data-flow path's stack); None for
    a `models:` merge, which keeps its donor's."""
    slices = merge_config.get("slices")
    if not slices:
        return None
    return sum(s["sources"][0]["layer_range"][1] - s["sources"][0]["layer_range"][0]
               for s in slices)


def passthrough_config(model_path: str, dtype: str) -> dict[str, Any]:
    """A parent model as a merge of itself, so in-memory workers load it the same way."""
    return {"merge_method": "passthrough", "models": [{"model": model_path}], "dtype": dtype}
