"""The evaluation worker: merge a candidate with mergekit, score it with lm-eval.

One instance lives in each Ray actor process and pays the expensive start-up once
(importing lm-eval, loading the tasks, choosing the example subset; in memory, also the
resident model and the input tensors); each candidate then costs only its merge, its
load (from disk, or a copy into the resident model) and its forward passes.
Every failure inside a job becomes a failed JobResult, never an exception, so one bad
candidate cannot take the run down.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor

from llm_evo.evaluation.backends import Staged, job_key
from llm_evo.evaluation.jobs import Job, JobResult, WorkerSpec
from llm_evo.evaluation.scoring import weighted_score

QUIET_LOGGERS = ("lm-eval", "lm_eval", "transformers", "datasets", "mergekit", "accelerate",
                 "huggingface_hub", "httpx", "filelock")


def resolve_device(device: str) -> str:
    """`auto` means the worker's GPU(s) when it has them, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def assigned_gpus() -> list[str]:
    """The GPU ids Ray reserved for this actor ([] outside Ray, or with no GPU).

    Ray's GPUs are logical: a cluster can offer GPUs that torch cannot see (no CUDA build,
    no driver), and the worker then scores on the CPU rather than failing every candidate.
    """
    try:
        import ray

        if not ray.is_initialized():
            return []
        context = ray.get_runtime_context()
        if hasattr(context, "get_accelerator_ids"):
            ids = context.get_accelerator_ids().get("GPU", [])
        else:  # Ray before 2.8
            ids = ray.get_gpu_ids()
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return []
    return [str(i) for i in ids]


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` means bfloat16 on GPUs and float32 on CPUs (where bf16 is slow and lossy)."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def settle_heap(backend: str) -> None:
    """Import what a first candidate would, then take every object alive now out of the
    cyclic garbage collector's view (`gc.freeze`).

    A worker's long-lived state (torch, transformers, mergekit and lm-eval's modules, the
    tasks and their documents: about half a million objects) otherwise makes every full
    collection walk it, and the disk backend collects after each candidate so that a
    model's memory is free before the next one loads: 0.34 s of a 1.2 s candidate on the
    tiny family. Frozen objects are still freed when their last reference goes; only a
    cycle among them would outlive its use, and nothing of a candidate exists yet here.
    """
    import mergekit.merge  # noqa: F401 - what the first merge imports

    if backend == "hf":
        import lm_eval.models.huggingface  # noqa: F401 - the first model load's imports
    gc.collect()
    gc.freeze()


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class EvalWorker:
    """Holds the run's lm-eval tasks and a backend, and scores jobs one at a time.

    `evaluate(job, prefetch=next_job)` merges `next_job` in a background thread while
    `job` is being scored (buffered scheduling); `evaluate_merged` scores a candidate that
    a `MergeWorker` on the same node has merged (serial scheduling).
    """

    def __init__(self, spec: WorkerSpec, worker_id: str = "w0", *, owns_process: bool = False):
        """`owns_process`: nothing else lives in this process (a Ray actor), so the worker
        may settle its heap once it is set up (`settle_heap`)."""
        _quiet()
        import torch

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.worker_id = worker_id
        self.gpu_ids = assigned_gpus()
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        self.warning: str | None = None
        if self.gpu_ids and not self.device.startswith("cuda"):
            self.warning = (f"worker {worker_id}: Ray reserved GPU(s) {','.join(self.gpu_ids)} "
                            f"but torch sees no CUDA device; it scores on the {self.device}")
            logging.getLogger(__name__).warning("%s", self.warning)
        os.makedirs(spec.merge_dir, exist_ok=True)

        from llm_evo.evaluation.backends import make_backend
        from llm_evo.evaluation.harness import Harness
        from llm_evo.resolve import make_task_manager, unknown_tasks

        names = [t.name for t in spec.tasks]
        self.task_manager = make_task_manager(list(spec.task_search_paths), names)
        self.unknown = unknown_tasks(self.task_manager, names)
        self.harness = Harness(spec, self.task_manager) if not self.unknown else None
        self.samples = self.harness.samples if self.harness else None
        self.backend = make_backend(spec, self.device, self.dtype, self.harness)
        self._pending: tuple[tuple, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None
        if owns_process:
            settle_heap(spec.backend)

    def info(self) -> dict:
        return {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "dtype": self.dtype,
            "gpu_ids": self.gpu_ids,
            "warning": self.warning,
            "unknown_tasks": self.unknown,
            "in_memory": self.spec.in_memory,
            "backend": self.spec.backend,
        }

    def pid(self) -> int:
        return os.getpid()

    def subset(self) -> dict[str, list[int]] | None:
        """The fixed example subset this worker scores (None: lm-eval's first `limit`)."""
        return self.samples

    # ---- scoring ---------------------------------------------------------------------------
    def evaluate(self, job: Job, prefetch: Job | None = None) -> JobResult:
        """Merge (unless already merged in the background) and score `job`; start merging
        `prefetch` as soon as `job`'s own merge is done."""
        started = time.perf_counter()
        pending = self._take_pending(job)
        timing: dict[str, float | None] = {}
        try:
            staged = None
            if pending is not None:
                t0 = time.perf_counter()
                staged = pending.result()
                timing["t_merge_wait"] = time.perf_counter() - t0
                timing["t_merge"] = staged.t_merge
            return self._run(job, staged, started, timing, prefetch)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is fatal
            if prefetch is not None and self._pending is None:
                self._start_prefetch(prefetch)
            return self._failed(job, exc, started, timing)

    def evaluate_merged(self, job: Job, staged: Staged) -> JobResult:
        """Score a candidate merged by a MergeWorker (serial scheduling)."""
        started = time.perf_counter()
        # The merge ran just before, in the paired MergeWorker: this job waited for it.
        timing: dict[str, float | None] = {"t_merge": staged.t_merge,
                                           "t_merge_wait": staged.t_merge}
        if staged.error is not None:
            return JobResult(job.generation, job.idx, "failed", error=staged.error,
                             t_merge=staged.t_merge, t_merge_wait=staged.t_merge,
                             t_total=staged.t_merge, worker=self.worker_id)
        try:
            res = self._run(job, staged, started, timing, None)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is fatal
            res = self._failed(job, exc, started, timing)
        res.t_total = (res.t_total or 0.0) + staged.t_merge
        return res

    def _run(self, job: Job, staged: Staged | None, started: float,
             timing: dict[str, float | None], prefetch: Job | None) -> JobResult:
        if self.harness is None:
            raise RuntimeError(f"unknown lm-eval task(s): {', '.join(self.unknown)}")
        try:
            staged, inline_merge, t_load = self.backend.activate(job, staged)
            if inline_merge is not None:
                timing["t_merge"] = timing["t_merge_wait"] = inline_merge
            if prefetch is not None:
                self._start_prefetch(prefetch)
                prefetch = None
            t0 = time.perf_counter()
            scored = self.backend.score(job.samples)
            t_eval = time.perf_counter() - t0
            score, per_task = weighted_score(scored.results, self.spec.tasks)
        finally:
            self.backend.release(staged)
            if prefetch is not None:
                self._start_prefetch(prefetch)
        return JobResult(job.generation, job.idx, "ok", score=score, results=per_task,
                         items=scored.items or None,
                         t_merge=timing.get("t_merge"), t_eval=t_eval,
                         t_total=time.perf_counter() - started, worker=self.worker_id,
                         t_load=t_load, t_merge_wait=timing.get("t_merge_wait"))

    def _failed(self, job: Job, exc: Exception, started: float,
                timing: dict[str, float | None]) -> JobResult:
        return JobResult(job.generation, job.idx, "failed", error=_describe(exc),
                         t_merge=timing.get("t_merge"), t_merge_wait=timing.get("t_merge_wait"),
                         t_total=time.perf_counter() - started, worker=self.worker_id)

    # ---- background merges (buffered scheduling) -------------------------------------------
    def _start_prefetch(self, job: Job) -> None:
        self.drop_prefetch()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge")
        self._pending = (job_key(job), self._pool.submit(self.backend.stage, job))

    def _take_pending(self, job: Job) -> Future | None:
        if self._pending is not None and self._pending[0] == job_key(job):
            fut = self._pending[1]
            self._pending = None
            return fut
        self.drop_prefetch()
        return None

    def drop_prefetch(self) -> None:
        """Forget a background merge nobody will score (its job went to another worker)."""
        if self._pending is None:
            return
        _, fut = self._pending
        self._pending = None
        if not fut.cancel():
            fut.add_done_callback(self._discard_result)

    def discard(self, staged: Staged) -> None:
        """Delete a merge that will not be scored here (serial: its job moved elsewhere)."""
        self.backend.discard(staged)

    def _discard_result(self, fut: Future) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        self.backend.discard(fut.result())


class MergeWorker:
    """Merges candidates for the EvalWorker placed beside it (serial scheduling).

    It never imports lm-eval's tasks or loads a model to score, so it starts quickly; what
    it returns (a folder on this node, or the merged tensors) goes straight to its EvalWorker.
    """

    def __init__(self, spec: WorkerSpec, worker_id: str = "m0"):
        _quiet()
        import torch

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        from dataclasses import replace

        from llm_evo.evaluation.backends import make_backend

        self.spec = spec
        self.worker_id = worker_id
        os.makedirs(spec.merge_dir, exist_ok=True)
        # Merges here run on the CPU; the tensors travel to the evaluator through Ray.
        self.backend = make_backend(replace(spec, merge_cuda=False, backend="hf"), "cpu",
                                    resolve_dtype(spec.dtype, resolve_device(spec.device)))

    def pid(self) -> int:
        return os.getpid()

    def merge(self, job: Job) -> Staged:
        started = time.perf_counter()
        try:
            return self.backend.stage(job)
        except Exception as exc:  # noqa: BLE001 - the evaluator records it as a failure
            return Staged(job_key(job), time.perf_counter() - started, error=_describe(exc))


def _describe(exc: BaseException) -> str:
    """Type, message and the innermost frame: enough to act on, short enough to store."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    text = f"{type(exc).__name__}: {exc}{where}"
    return text if len(text) <= 2000 else text[:1997] + "..."
