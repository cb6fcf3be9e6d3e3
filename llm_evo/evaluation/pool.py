"""Ray actors that evaluate jobs: one per GPU, or `num_workers` on CPUs when there is none.

With `schedulers.py`, the only code that talks to Ray. The strategy (pool, buffered,
serial) decides how jobs reach the actors; under every one a worker takes new work as
soon as it is free, and each result is handed to the caller the moment it arrives, so it
can be recorded before anything else happens.
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


STRATEGIES = ("pool", "buffered", "serial")


@dataclass(frozen=True)
class PoolOptions:
    ray_address: str | None = None
    num_workers: int | None = None
    num_gpus: int | None = None
    max_restarts: int = 2
    strategy: str = "pool"  # pool, buffered or serial (see schedulers.py)


class WorkerPool:
    """Starts (or joins) Ray, places the evaluation actors, and runs batches of jobs."""

    def __init__(self, spec: WorkerSpec, options: PoolOptions):
        if options.strategy not in STRATEGIES:
            raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, "
                              f"not {options.strategy!r}")
        self.spec = spec
        self.options = options
        self.actors: list = []
        self.mergers: list = []
        self.placement_groups: list = []
        self.worker_info: list[dict] = []
        self.use_gpu = False
        self._owns_ray = False

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        serial = self.options.strategy == "serial"
        if self.spec.backend == "vllm" and not self.options.ray_address:
            from llm_evo.evaluation.vllm_backend import require_vllm

            require_vllm()  # on a cluster the workers check for themselves
        spec = self._reshard(self.spec)
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
                per_worker = 2 if serial else 1
                ray.init(num_cpus=max(cpus, per_worker * (self.options.num_workers or 1)),
                         **kwargs)
            self._owns_ray = True
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.options.num_gpus is not None:
            gpus = min(gpus, self.options.num_gpus)
        self.use_gpu = gpus > 0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if self.use_gpu:
            n_workers, per_actor = gpus, {"num_gpus": 1, "num_cpus": 1}
            threads = None
        else:
            per_worker = 2 if serial else 1
            n_workers = self.options.num_workers or max(1, min(4, cpus // per_worker))
            per_actor = {"num_cpus": 1}
            threads = max(1, cpus // (n_workers * per_worker))
        spec = spec if threads is None else _with_threads(spec, threads)
        from llm_evo.evaluation.worker import EvalWorker, MergeWorker

        restarts = dict(max_restarts=self.options.max_restarts, max_task_retries=1)
        eval_cls = ray.remote(**restarts)(EvalWorker)
        if serial:
            self._start_pairs(ray, eval_cls, ray.remote(**restarts)(MergeWorker), spec,
                              n_workers, per_actor)
        else:
            self.actors = [eval_cls.options(**per_actor).remote(spec, f"w{i}")
                           for i in range(n_workers)]
        try:
            self.worker_info = ray.get([a.info.remote() for a in self.actors])
            ray.get([m.pid.remote() for m in self.mergers])
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start is fatal
            raise RuntimeError(f"evaluation workers failed to start: {exc}") from exc
        unknown = sorted({t for info in self.worker_info for t in info["unknown_tasks"]})
        if unknown:
            raise ConfigError(
                f"tasks: unknown lm-eval task {', '.join(unknown)} (add its folder with "
                "--task-search-path or evaluation.task_search_path)"
            )

    def _start_pairs(self, ray, eval_cls, merge_cls, spec: WorkerSpec, n_workers: int,
                     per_actor: dict) -> None:
        """One placement group per worker: its merger and its evaluator on one node."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        eval_bundle = {"CPU": 1, **({"GPU": 1} if self.use_gpu else {})}
        have = int(ray.cluster_resources().get("CPU", 0))
        if have < 2 * n_workers:
            raise ConfigError(f"--strategy serial needs 2 CPUs per worker (a merger and an "
                              f"evaluator): {n_workers} worker(s), but Ray has {have} CPUs")
        for i in range(n_workers):
            pg = placement_group([{"CPU": 1}, eval_bundle], strategy="STRICT_PACK")
            self.placement_groups.append(pg)
            try:
                ray.get(pg.ready(), timeout=120)
            except Exception as exc:  # noqa: BLE001 - e.g. GetTimeoutError
                raise ConfigError(
                    f"--strategy serial: cannot place worker {i} (needs {eval_bundle} plus "
                    f"1 CPU for its merger on one node): {_first_line(exc)}") from None

            def on(bundle: int, pg=pg) -> PlacementGroupSchedulingStrategy:
                return PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle)

            self.mergers.append(merge_cls.options(num_cpus=1, scheduling_strategy=on(0))
                                .remote(spec, f"m{i}"))
            self.actors.append(eval_cls.options(**per_actor, scheduling_strategy=on(1))
                               .remote(spec, f"w{i}"))

    def _reshard(self, spec: WorkerSpec) -> WorkerSpec:
        """Copy the input models into the storage path once, before any worker starts."""
        if not spec.reshard_dir or not spec.input_models:
            return spec
        from dataclasses import replace

        from llm_evo.evaluation.reshard import reshard_models

        mapping = reshard_models(spec.input_models, spec.reshard_dir)
        return replace(spec, model_map=tuple(sorted(mapping.items())))

    def shutdown(self) -> None:
        import ray

        for actor in [*self.actors, *self.mergers]:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []
        self.mergers = []
        if self.placement_groups:
            from ray.util.placement_group import remove_placement_group

            for pg in self.placement_groups:
                try:
                    remove_placement_group(pg)
                except Exception:  # noqa: BLE001 - already gone
                    pass
            self.placement_groups = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # ---- running jobs ----------------------------------------------------------------------
    def run(self, jobs: Iterable[Job], on_result: Callable[[JobResult], None]) -> None:
        """Evaluate `jobs` with the pool's strategy, calling `on_result` as each finishes."""
        from llm_evo.evaluation import schedulers

        if self.options.strategy == "serial":
            schedulers.run_serial(list(zip(self.mergers, self.actors, strict=True)), jobs,
                                  on_result, self._alive)
        elif self.options.strategy == "buffered":
            schedulers.run_buffered(self.actors, jobs, on_result, self._alive)
        else:
            schedulers.run_pool(self.actors, jobs, on_result, self._alive)

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

    def subsets(self) -> list[dict[str, list[int]] | None]:
        """Each worker's fixed example subset (all equal when the run shuffles)."""
        import ray

        return ray.get([a.subset.remote() for a in self.actors])


def _with_threads(spec: WorkerSpec, threads: int) -> WorkerSpec:
    from dataclasses import replace

    return spec if spec.torch_threads else replace(spec, torch_threads=threads)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
