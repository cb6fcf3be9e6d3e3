"""Plain data that crosses the Ray boundary: what to evaluate and how, and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TaskSpec:
    name: str
    weight: float
    metric: str


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, fixed for the run; built once by the session."""

    tasks: tuple[TaskSpec, ...]
    task_search_paths: tuple[str, ...]
    merge_dir: str
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str | None = None
    limit: int | None = None
    num_fewshot: int | None = None
    shuffle: bool = False
    seed: int = 0
    apply_chat_template: bool = False
    fewshot_as_multiturn: bool = True
    model_args: dict[str, Any] = field(default_factory=dict)
    merge_cuda: bool = False
    trust_remote_code: bool = False
    allow_crimes: bool = False
    torch_threads: int | None = None
    keep_merges: bool = False
    # GPUs per worker (evaluation.gpus_per_worker): a model larger than one GPU is sharded
    # over them (HF: device_map="auto"; vLLM: tensor parallel).
    gpus_per_worker: int = 1
    # Fast evaluation (issue #6). In memory, one model stays resident per worker and each
    # candidate's merged tensors are copied into it; no merge touches the disk.
    in_memory: bool = False
    backend: str = "hf"  # "hf" (transformers) or "vllm"
    # Where input tensors are kept for in-memory merges: "auto" = on the GPU while memory
    # allows, else CPU; "cpu" = always on the CPU.
    input_cache: str = "auto"
    # Input models rewritten to local copies (original -> resharded), set by the worker set.
    model_map: tuple[tuple[str, str], ...] = ()
    reshard_dir: str | None = None
    input_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One evaluation: a merge config to build, or an existing model (a parent) to score."""

    generation: int
    idx: int
    merge_config: dict[str, Any] | None = None
    model_path: str | None = None
    kind: str = "candidate"
    label: str | None = None
    # Merge into this folder and keep it (a pool member, merged on the worker that scores
    # it); without it a merge goes to a scratch folder that is deleted after scoring.
    out_path: str | None = None
    # Score only these lm-eval doc ids per task (screening: anchors first, then the rest).
    samples: dict[str, list[int]] | None = None


@dataclass
class JobResult:
    generation: int
    idx: int
    status: str  # "ok" or "failed"
    score: float | None = None
    results: dict[str, float] | None = None
    error: str | None = None
    t_merge: float | None = None
    t_eval: float | None = None
    t_total: float | None = None
    worker: str | None = None
    # Finer timings: loading the model (on disk) or copying merged tensors into the resident
    # model (in memory); and how long the worker was blocked on the merge, which is less
    # than t_merge when the merge ran in the background (buffered scheduling).
    t_load: float | None = None
    t_merge_wait: float | None = None
    # Per item: {"task/metric": {"ids": lm-eval doc ids, "values": the metric per doc}}.
    items: dict[str, dict[str, list]] | None = None
