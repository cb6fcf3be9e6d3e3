"""The evaluation worker: merge a candidate with mergekit, score it with lm-eval.

One instance lives in each Ray actor process and pays the expensive start-up once
(importing lm-eval, indexing tasks into a TaskManager, choosing the example subset);
each candidate then costs only its merge, its model load and its forward passes.
Every failure inside a job becomes a failed JobResult, never an exception, so one bad
candidate cannot take the run down.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import socket
import tempfile
import time
import traceback

from llm_evo.evaluation.jobs import Job, JobResult, WorkerSpec
from llm_evo.evaluation.scoring import weighted_score

QUIET_LOGGERS = ("lm-eval", "lm_eval", "transformers", "datasets", "mergekit", "accelerate",
                 "huggingface_hub", "httpx", "filelock")


def resolve_device(device: str) -> str:
    """`auto` means the worker's GPU when it has one, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` means bfloat16 on GPUs and float32 on CPUs (where bf16 is slow and lossy)."""
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    return dtype


def _quiet() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class EvalWorker:
    """Holds a TaskManager and scores jobs one at a time."""

    def __init__(self, spec: WorkerSpec, worker_id: str = "w0"):
        _quiet()
        import torch

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        self.spec = spec
        self.worker_id = worker_id
        self.device = resolve_device(spec.device)
        self.dtype = resolve_dtype(spec.dtype, self.device)
        os.makedirs(spec.merge_dir, exist_ok=True)

        from llm_evo.resolve import make_task_manager, unknown_tasks

        names = [t.name for t in spec.tasks]
        self.task_manager = make_task_manager(list(spec.task_search_paths), names)
        self.unknown = unknown_tasks(self.task_manager, names)
        self.samples = self._fixed_subset(names) if not self.unknown else None

    def _fixed_subset(self, names: list[str]) -> dict[str, list[int]] | None:
        """With `shuffle` and `limit`, one seeded subset of examples per task, identical on
        every worker, so all candidates of a run see the same examples."""
        if not (self.spec.shuffle and self.spec.limit):
            return None
        import numpy as np
        from lm_eval.tasks import get_task_dict

        subset = {}
        for name, task in get_task_dict(names, self.task_manager).items():
            n = len(task.eval_docs)
            rng = np.random.default_rng([self.spec.seed, n])
            k = min(self.spec.limit, n)
            subset[name] = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
        return subset

    def info(self) -> dict:
        return {
            "worker": self.worker_id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "device": self.device,
            "dtype": self.dtype,
            "unknown_tasks": self.unknown,
        }

    def pid(self) -> int:
        return os.getpid()

    def evaluate(self, job: Job) -> JobResult:
        started = time.perf_counter()
        merged_dir = None
        t_merge = None
        try:
            path = job.model_path
            if job.merge_config is not None:
                merged_dir = tempfile.mkdtemp(prefix=f"g{job.generation}_c{job.idx}_",
                                              dir=self.spec.merge_dir)
                self._merge(job.merge_config, merged_dir)
                path = merged_dir
                t_merge = time.perf_counter() - started
            if path is None:
                raise ValueError("job has neither a merge config nor a model path")
            t0 = time.perf_counter()
            results = self._score(path)
            score, per_task = weighted_score(results, self.spec.tasks)
            now = time.perf_counter()
            return JobResult(job.generation, job.idx, "ok", score=score, results=per_task,
                             t_merge=t_merge, t_eval=now - t0, t_total=now - started,
                             worker=self.worker_id)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none is fatal
            return JobResult(job.generation, job.idx, "failed", error=_describe(exc),
                             t_merge=t_merge, t_total=time.perf_counter() - started,
                             worker=self.worker_id)
        finally:
            if merged_dir and not self.spec.keep_merges:
                shutil.rmtree(merged_dir, ignore_errors=True)
            gc.collect()
            if self.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

    def _merge(self, merge_config: dict, out_dir: str) -> None:
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        options = MergeOptions(
            cuda=self.spec.merge_cuda and self.device.startswith("cuda"),
            copy_tokenizer=True,
            trust_remote_code=self.spec.trust_remote_code,
            allow_crimes=self.spec.allow_crimes,
            lazy_unpickle=True,
            low_cpu_memory=False,
            write_model_card=False,
            quiet=True,
        )
        run_merge(MergeConfiguration.model_validate(merge_config), out_path=out_dir,
                  options=options)

    def _score(self, path: str) -> dict:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        model_args = {
            "pretrained": path,
            "device": self.device,
            "dtype": self.dtype,
            "trust_remote_code": self.spec.trust_remote_code,
            **self.spec.model_args,
        }
        if self.spec.batch_size is not None:
            model_args["batch_size"] = self.spec.batch_size
        lm = HFLM(**model_args)
        try:
            out = lm_eval.simple_evaluate(
                model=lm,
                tasks=[t.name for t in self.spec.tasks],
                task_manager=self.task_manager,
                limit=None if self.samples else self.spec.limit,
                samples=self.samples,
                num_fewshot=self.spec.num_fewshot,
                apply_chat_template=self.spec.apply_chat_template,
                fewshot_as_multiturn=(self.spec.fewshot_as_multiturn
                                      and self.spec.apply_chat_template),
                log_samples=False,
                bootstrap_iters=0,
                verbosity="ERROR",
                random_seed=self.spec.seed,
                numpy_random_seed=self.spec.seed,
                torch_random_seed=self.spec.seed,
                fewshot_random_seed=self.spec.seed,
            )
        finally:
            del lm
        if not out or "results" not in out:
            raise RuntimeError("lm-eval returned no results")
        return out["results"]


def _describe(exc: BaseException) -> str:
    """Type, message and the innermost frame: enough to act on, short enough to store."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
    text = f"{type(exc).__name__}: {exc}{where}"
    return text if len(text) <= 2000 else text[:1997] + "..."
