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
import time
from collections.abc import Callable, Iterable, Iterator
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


def passthrough_config(model_path: str, dtype: str) -> dict[str, Any]:
    """A parent model as a merge of itself, so in-memory workers load it the same way."""
    return {"merge_method": "passthrough", "models": [{"model": model_path}], "dtype": dtype}


class ResidentHF:
    """One transformers model kept on the worker's device, with one HFLM wrapper around it.

    The model object never changes, only its parameters' values, so the tokenizer, the
    config and lm-eval's wrapper are built once, not per candidate.
    """

    def __init__(self, donor: str, device: str, dtype: str, *, batch_size: Any = None,
                 model_args: dict[str, Any] | None = None, trust_remote_code: bool = False):
        import torch
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(donor, dtype=torch_dtype,
                                                     trust_remote_code=trust_remote_code)
        model.to(device)
        model.eval()
        model.requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(donor, trust_remote_code=trust_remote_code)
        kwargs = {k: v for k, v in (model_args or {}).items() if k not in _LOAD_ONLY_ARGS}
        if batch_size is not None:
            kwargs["batch_size"] = batch_size
        # device is passed explicitly: HFLM's default is "cuda".
        self.lm = _memo_hflm_class(HFLM)(pretrained=model, tokenizer=tokenizer, device=device,
                                         **kwargs)
        self.model = model
        self.device = device
        self.donor = donor
        self.targets: dict[str, Any] = dict(model.named_parameters(remove_duplicate=False))
        for name, buf in model.named_buffers(remove_duplicate=False):
            self.targets.setdefault(name, buf)
        self.required = {name: p for name, p in model.named_parameters()}

    def write(self, items: Iterable[MergedTensor],
              clock: Callable[[], float] = time.perf_counter) -> float:
        """Copy merged tensors into the model's parameters; returns the seconds spent copying.

        Every parameter must be written: a candidate that leaves one unset would be scored
        with the previous candidate's values, so that is an error, as is a shape mismatch.
        """
        import torch

        written: dict[int, set[tuple[int, int]]] = {}  # row ranges of each parameter
        t_copy = 0.0
        with torch.no_grad():
            for item in items:
                if item.tensor is None:
                    if item.optional:
                        continue
                    raise RuntimeError(f"the merge produced no value for {item.name}")
                target = next((self.targets[n] for n in item.names if n in self.targets), None)
                if target is None:
                    if item.optional:
                        continue
                    raise RuntimeError(f"merged tensor {item.name} has no counterpart in the "
                                       f"resident model (loaded from {self.donor})")
                part = target if item.rows is None else target[item.rows[0]:item.rows[1]]
                if tuple(part.shape) != tuple(item.tensor.shape):
                    raise RuntimeError(
                        f"merged tensor {item.name} has shape {tuple(item.tensor.shape)}, the "
                        f"resident model's is {tuple(part.shape)}")
                t0 = clock()
                part.copy_(item.tensor)
                t_copy += clock() - t0
                written.setdefault(id(target), set()).add(item.rows or (0, _rows(target)))
            if self.device.startswith("cuda"):
                t0 = clock()
                torch.cuda.synchronize()
                t_copy += clock() - t0
        missing = [n for n, p in self.required.items()
                   if sum(r1 - r0 for r0, r1 in written.get(id(p), ())) < _rows(p)]
        if missing:
            raise RuntimeError(
                f"the merge left {len(missing)} parameter(s) of the resident model unset "
                f"(first: {missing[0]}); this model cannot be evaluated in memory")
        return t_copy


def _rows(tensor: Any) -> int:
    return tensor.shape[0] if tensor.ndim else 1


MEMO_MAX = 200_000  # tokenised (context, continuation) pairs kept per resident model


def _memo_hflm_class(hflm: type) -> type:
    """HFLM that remembers how it tokenised each (context, continuation) pair.

    A resident model scores the same prompts for every candidate with the same tokenizer,
    and tokenising them again was about a fifth of each candidate's evaluation on the tiny
    family. A subclass through lm-eval's own `_encode_pair` hook; lm-eval is not patched.
    """

    class MemoHFLM(hflm):
        def _encode_pair(self, context: str, continuation: str) -> tuple[list, list]:
            memo = self.__dict__.setdefault("_llm_evo_pairs", {})
            hit = memo.get((context, continuation))
            if hit is None:
                if len(memo) >= MEMO_MAX:
                    memo.clear()
                hit = super()._encode_pair(context, continuation)
                memo[(context, continuation)] = hit
            return list(hit[0]), list(hit[1])

    return MemoHFLM


# HFLM arguments that only matter when lm-eval loads the model itself.
_LOAD_ONLY_ARGS = frozenset({
    "pretrained", "device", "dtype", "torch_dtype", "revision", "subfolder",
    "trust_remote_code", "parallelize", "max_memory_per_gpu", "max_cpu_memory",
    "offload_folder", "peft", "delta", "autogptq", "gptqmodel", "gguf_file", "tp_plan",
})
