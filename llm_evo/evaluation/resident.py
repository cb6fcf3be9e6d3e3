"""The resident model of an in-memory worker (in_memory.py computes what is written to it).

One transformers model per worker, wrapped once by lm-eval's HFLM, whose parameters each
candidate's merged tensors overwrite; rebuilt only when a data-flow candidate changes the
layer count. HFLM's tokenisation of (context, continuation) pairs is memoised, as the
same items are scored for every candidate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from llm_evo.evaluation.in_memory import MergedTensor


class ResidentHF:
    """One transformers model kept on the worker's device, with one HFLM wrapper around it.

    The model object never changes while the merges keep its depth, only its parameters'
    values, so the tokenizer, the config and lm-eval's wrapper are built once, not per
    candidate. A data-flow candidate (llm_evo/dataflow.py) may have another layer count:
    then `resize` builds a model of the same architecture at that depth, uninitialised
    (every parameter is written before it is scored), and wraps it anew.
    """

    def __init__(self, donor: str, device: str, dtype: str, *, batch_size: Any = None,
                 model_args: dict[str, Any] | None = None, trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch_dtype = getattr(torch, dtype)
        self.trust_remote_code = trust_remote_code
        model = AutoModelForCausalLM.from_pretrained(donor, dtype=self.torch_dtype,
                                                     trust_remote_code=trust_remote_code)
        self.tokenizer = AutoTokenizer.from_pretrained(donor,
                                                       trust_remote_code=trust_remote_code)
        self.lm_kwargs = {k: v for k, v in (model_args or {}).items()
                          if k not in _LOAD_ONLY_ARGS}
        if batch_size is not None:
            self.lm_kwargs["batch_size"] = batch_size
        self.device = device
        self.donor = donor
        self.base_layers = model.config.num_hidden_layers
        self._wrap(model)

    def _wrap(self, model: Any) -> None:
        from lm_eval.models.huggingface import HFLM

        model.to(self.device)
        model.eval()
        model.requires_grad_(False)
        # device is passed explicitly: HFLM's default is "cuda".
        self.lm = _memo_hflm_class(HFLM)(pretrained=model, tokenizer=self.tokenizer,
                                         device=self.device, **self.lm_kwargs)
        self.model = model
        self.targets: dict[str, Any] = dict(model.named_parameters(remove_duplicate=False))
        for name, buf in model.named_buffers(remove_duplicate=False):
            self.targets.setdefault(name, buf)
        self.required = {name: p for name, p in model.named_parameters()}

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def resize(self, num_layers: int) -> float:
        """Rebuild the model with `num_layers` layers (nothing if it has them already);
        returns the seconds it took."""
        if num_layers == self.num_layers:
            return 0.0
        import copy

        from transformers import AutoModelForCausalLM
        from transformers.initialization import no_init_weights

        started = time.perf_counter()
        config = copy.deepcopy(self.model.config)
        types = getattr(config, "layer_types", None)
        if types and len(set(types)) > 1:
            raise RuntimeError("a model whose layers differ in kind (layer_types) cannot be "
                               "resized in memory: merge data-flow candidates on disk")
        config.num_hidden_layers = num_layers
        if types:
            config.layer_types = [types[0]] * num_layers
        memo = self.lm.__dict__.get("_llm_evo_pairs")  # tokenisation does not change
        self.model = self.lm = None  # the old model's memory goes before the new one's
        with no_init_weights():  # transformers' own: every parameter is written anyway
            model = AutoModelForCausalLM.from_config(config, dtype=self.torch_dtype,
                                                     trust_remote_code=self.trust_remote_code)
        model.tie_weights()
        self._wrap(model)
        if memo is not None:
            self.lm.__dict__["_llm_evo_pairs"] = memo
        return time.perf_counter() - started

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
