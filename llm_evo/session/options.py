"""Run-time choices of a session: CLI flags, not config (they never change a run's identity).

Why one module: `llm-evo run` and `llm-evo pool` start the same Ray workers, resolve the same
task paths and guard the same storage path (`SessionOptions`); each command adds only its own
flags (`RunOptions`, `PoolOptions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SessionOptions:
    storage_path: str
    ray_address: str | None = None
    num_workers: int | None = None
    num_gpus: int | None = None
    trust_remote_code: bool = False
    allow_crimes: bool = False
    task_search_paths: tuple[str, ...] = ()  # added to the config's evaluation.task_search_path
    config_dir: str | None = None  # where relative paths in the config may also resolve
    quiet: bool = False
    force_new_run: bool = False  # start a new run even if the path holds another one


@dataclass(frozen=True)
class RunOptions(SessionOptions):
    """`llm-evo run`'s own flags: scheduling, the final merge, resume, timeout, W&B."""

    merge_cuda: bool = True
    save_final_model: bool = False
    scheduling: str = "pool"
    strategy_kwargs: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # insist on continuing a run (an error if there is none)
    # mergekit-evolve's --timeout: no generation starts after this many seconds of search
    # (the one running finishes), counted from this invocation's first generation.
    timeout: float | None = None
    wandb_overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PoolOptions(SessionOptions):
    """`llm-evo pool`'s own flags: so far, only the ones every session has."""
