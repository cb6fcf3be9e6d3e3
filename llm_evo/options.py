"""Run-time choices shared by `llm-evo run` and `llm-evo pool` (CLI flags, not config).

Why: both commands start the same Ray workers, resolve the same task paths and guard the same
storage path; each adds only its own flags (RunOptions in controller.py, PoolOptions in
pool/runner.py).
"""

from __future__ import annotations

from dataclasses import dataclass


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
