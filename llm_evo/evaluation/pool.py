"""Ray actors that evaluate jobs: one per GPU, or `num_workers` on CPUs when there is none.

The only module that talks to Ray. A job goes to whichever actor is idle next, so no
worker waits while candidates of the generation are unstarted; each result is handed
to the caller the moment it arrives, so it can be recorded before anything else happens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llm_evo.errors import ConfigError
from llm_evo.evaluation.jobs import Job, JobResult, WorkerSpec

log = logging.getLogger(__name__)

WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


@dataclass(frozen=True)
class PoolOptions:
    ray_address: str | None = None
    num_workers: int | None = None
    num_gpus: int | None = None
    max_restarts: int = 2


class WorkerPool:
    """Starts (or joins) Ray, places the evaluation actors, and runs batches of jobs."""

    def __init__(self, spec: WorkerSpec, options: PoolOptions):
        self.spec = spec
        self.options = options
        self.actors: list = []
        self.worker_info: list[dict] = []
        self.use_gpu = False
        self._owns_ray = False

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        if not ray.is_initialized():
            address = self.options.ray_address
            kwargs = dict(
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": WORKER_ENV},
            )
            if address:
                ray.init(address=address, **kwargs)
            else:
                cpus = os.cpu_count() or 1
                ray.init(num_cpus=max(cpus, self.options.num_workers or 1), **kwargs)
            self._owns_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.options.num_gpus is not None:
            gpus = min(gpus, self.options.num_gpus)
        self.use_gpu = gpus > 0
        if self.use_gpu:
            n_workers, per_actor = gpus, {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:
            cpus = int(ray.cluster_resources().get("CPU", 1))
            n_workers = self.options.num_workers or max(1, min(4, cpus))
            per_actor = {"num_cpus": 1}
            threads = max(1, cpus // n_workers)
        spec = self.spec if threads is None else _with_threads(self.spec, threads)
        actor_cls = ray.remote(
            max_restarts=self.options.max_restarts, max_task_retries=1, **per_actor
        )(_actor_class())
        self.actors = [actor_cls.remote(spec, f"w{i}") for i in range(n_workers)]
        try:
            self.worker_info = ray.get([a.info.remote() for a in self.actors])
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start is fatal
            raise RuntimeError(f"evaluation workers failed to start: {exc}") from exc
        unknown = sorted({t for info in self.worker_info for t in info["unknown_tasks"]})
        if unknown:
            raise ConfigError(
                f"tasks: unknown lm-eval task {', '.join(unknown)} (add its folder with "
                "--task-search-path or evaluation.task_search_path)"
            )

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # ---- running jobs ----------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], on_result: Callable[[JobResult], None]) -> None:
        """Evaluate `jobs` on the pool, calling `on_result` as each one finishes."""
        import ray

        queue = list(jobs)
        queue.reverse()
        in_flight: dict = {}  # ObjectRef -> (actor, job)
        idle = list(self.actors)
        while queue or in_flight:
            while queue and idle:
                actor, job = idle.pop(0), queue.pop()
                in_flight[actor.evaluate.remote(job)] = (actor, job)
            if not in_flight:
                raise RuntimeError("no evaluation workers are left alive")
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            actor, job = in_flight.pop(ref)
            try:
                result = ray.get(ref)
                idle.append(actor)
            except ray.exceptions.RayActorError as exc:
                result = _failed(job, f"worker died: {_first_line(exc)}")
                if self._alive(actor):
                    idle.append(actor)
            except Exception as exc:  # noqa: BLE001 - e.g. a task-level system error
                result = _failed(job, f"{type(exc).__name__}: {_first_line(exc)}")
                idle.append(actor)
            on_result(result)

    def _alive(self, actor) -> bool:
        import ray

        try:
            ray.get(actor.pid.remote(), timeout=60)
            return True
        except Exception:  # noqa: BLE001 - dead or unreachable
            return False

    def worker_pids(self) -> list[int]:
        import ray

        return ray.get([a.pid.remote() for a in self.actors])


def _actor_class():
    from llm_evo.evaluation.worker import EvalWorker

    return EvalWorker


def _with_threads(spec: WorkerSpec, threads: int) -> WorkerSpec:
    from dataclasses import replace

    return spec if spec.torch_threads else replace(spec, torch_threads=threads)


def _failed(job: Job, error: str) -> JobResult:
    return JobResult(job.generation, job.idx, "failed", error=error)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
