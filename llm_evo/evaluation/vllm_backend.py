"""Optional vLLM scoring: on disk through lm-eval's vLLM model, in memory through vLLM's
public weight-loading path.

vLLM is imported only here, and only when `evaluation.backend: vllm` (`--vllm`) asks for
it; `require_vllm()` runs before any worker starts, so a missing install is one clear
error at start-up, not a failed candidate per worker.

In memory, the engine is built once per worker from the donor model. Each candidate's
merged tensors reach the engine through `LLM.collective_rpc`, which calls a method of
`MergedWeightsExtension`, installed with vLLM's public `worker_extension_cls` engine
argument; that method hands the tensors to the model's own `load_weights`, which maps
checkpoint (Hugging Face) names to vLLM's fused parameters. No private engine attribute
is touched. The prefix cache is reset after each load, since cached KV blocks were
computed with the previous candidate's weights.

NOTE: not exercised on this project's CI machines (no GPU, no vLLM); see
docs/performance.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from llm_evo.errors import ConfigError

EXTENSION = "llm_evo.evaluation.vllm_backend.MergedWeightsExtension"
RPC_METHOD = "llm_evo_load_merged_weights"


def require_vllm() -> str:
    """vLLM's version, or a ConfigError that says how to get it."""
    try:
        import vllm
    except ImportError as exc:
        raise ConfigError(
            f"--vllm / evaluation.backend: vllm needs the vllm package, which cannot be "
            f"imported ({exc}); install it with `pip install 'llm-evo[vllm]'` on the GPU "
            "workers, or use the default hf backend") from None
    return getattr(vllm, "__version__", "unknown")


def _vllm_args(spec: Any, dtype: str) -> dict[str, Any]:
    args = {"dtype": dtype, "trust_remote_code": spec.trust_remote_code, "seed": spec.seed,
            **spec.model_args}
    args.setdefault("batch_size", spec.batch_size if spec.batch_size is not None else "auto")
    if int(args.get("data_parallel_size", 1)) > 1:
        raise ConfigError("evaluation.model_args.data_parallel_size > 1 is not supported: "
                          "llm-evo already runs one worker per GPU")
    gpus = spec.gpus_per_worker
    if int(args.get("tensor_parallel_size", gpus)) != gpus:
        raise ConfigError(
            f"evaluation.model_args.tensor_parallel_size is {args['tensor_parallel_size']}, "
            f"but each worker has {gpus} GPU(s): set evaluation.gpus_per_worker instead")
    if gpus > 1:  # one engine over the worker's GPUs, in processes of its own
        args["tensor_parallel_size"] = gpus
        args.setdefault("distributed_executor_backend", "mp")
    return args


def open_vllm(path: str, spec: Any, dtype: str) -> Any:
    """lm-eval's vLLM model for a merged model on disk."""
    require_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(pretrained=path, **_vllm_args(spec, dtype))


def close_vllm(lm: Any) -> None:
    """Free the engine's GPU memory before the next candidate's engine starts."""
    import gc

    engine = getattr(lm, "model", None)
    del lm
    if engine is not None:
        del engine
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
    except ImportError:
        cleanup_dist_env_and_memory = None
    gc.collect()
    if cleanup_dist_env_and_memory is not None:
        cleanup_dist_env_and_memory()


class MergedWeightsExtension:
    """Mixed into vLLM's worker class by vLLM itself (`worker_extension_cls`)."""

    def llm_evo_load_merged_weights(self, named_tensors: list[tuple[str, Any]]) -> int:
        model = self.model_runner.model  # the documented attribute for worker extensions
        device = next(model.parameters()).device
        model.load_weights(weights=((n, t.to(device)) for n, t in named_tensors))
        return len(named_tensors)


class ResidentVLLM:
    """One vLLM engine per worker, wrapped once in lm-eval's vLLM model."""

    def __init__(self, donor: str, spec: Any, dtype: str):
        require_vllm()
        # In-process engine: tensors passed to collective_rpc are handed over, not pickled.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from lm_eval.models.vllm_causallms import VLLM

        args = _vllm_args(spec, dtype)
        args.setdefault("worker_extension_cls", EXTENSION)
        self.lm = VLLM(pretrained=donor, **args)
        self.engine = self.lm.model  # the vllm.LLM instance lm-eval built
        self.donor = donor

    def write(self, items: Iterable[Any]) -> float:
        import time

        named = []
        for item in items:
            if item.tensor is None:
                if item.optional:
                    continue
                raise RuntimeError(f"the merge produced no value for {item.name}")
            named.append((item.name, item.tensor))
        t0 = time.perf_counter()  # the merge ran while `items` was consumed: not counted
        self.engine.collective_rpc(RPC_METHOD, args=(named,))
        self.engine.reset_prefix_cache()
        return time.perf_counter() - t0
