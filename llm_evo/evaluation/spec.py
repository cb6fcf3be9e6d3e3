"""The WorkerSpec of a scoring config: what run and pool workers share, built in one place.

Why: `llm-evo run` and `llm-evo pool` score merges the same way (`tasks:`, `limit`,
`evaluation:` ... of ScoringConfig); each adds only what is its own (merge dir, seed, the
run's in-memory and reshard options).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llm_evo.config import ScoringConfig
from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec


def worker_spec(cfg: ScoringConfig, *, task_search_paths: Sequence[str], merge_dir: str,
                seed: int, trust_remote_code: bool, allow_crimes: bool,
                **extra: Any) -> WorkerSpec:
    """WorkerSpec fields from `cfg`; `extra` sets the caller's own (in_memory, merge_cuda...)."""
    ev = cfg.evaluation
    return WorkerSpec(
        tasks=tuple(TaskSpec(t.name, t.weight, t.metric) for t in cfg.tasks),
        task_search_paths=tuple(task_search_paths),
        merge_dir=merge_dir,
        device=ev.device,
        dtype=ev.dtype,
        batch_size=ev.batch_size,
        limit=cfg.limit,
        num_fewshot=cfg.num_fewshot,
        shuffle=cfg.shuffle,
        seed=seed,
        apply_chat_template=cfg.chat_template,
        fewshot_as_multiturn=cfg.fewshot_as_multiturn,
        model_args=dict(ev.model_args),
        trust_remote_code=trust_remote_code,
        allow_crimes=allow_crimes,
        backend=ev.backend,
        torch_threads=ev.torch_threads,
        gpus_per_worker=ev.gpus_per_worker,
        **extra,
    )
