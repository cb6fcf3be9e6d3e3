"""The worker set: Ray actors that evaluate jobs, one per `gpus_per_worker` GPUs on a node,
or `num_workers` on CPUs when the cluster has no GPU.

With `schedulers.py`, the only code that talks to Ray. The scheduling strategy (`pool`,
`buffered`, `serial`: mergekit-evolve's `--strategy` values, where `pool` means Ray's
actor pool, not llm-evo's model pool) decides how jobs reach the actors; under every one a
worker takes new work as soon as it is free, and each result is handed to the caller the
moment it arrives, so it can be recorded before anything else happens.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llm_evo.errors import ConfigError, WorkersLostError, first_line
from llm_evo.evaluation import cluster
from llm_evo.evaluation.jobs import Job, JobResult, WorkerSpec

log = logging.getLogger(__name__)

WORKER_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


STRATEGIES = ("pool", "buffered", "serial")


@dataclass(frozen=True)
class WorkerOptions:
    """How many workers, on which Ray cluster, scheduled how (run and pool alike)."""

    ray_address: str | None = None
    num_workers: int | None = None
    num_gpus: int | None = None
    max_restarts: int = 2
    strategy: str = "pool"  # pool, buffered or serial (see schedulers.py)
    echo: Callable[[str], None] | None = None  # one-line notices (default: a log warning)


class WorkerSet:
    """Starts (or joins, see cluster.py) Ray, places the evaluation actors, and runs batches
    of jobs."""

    def __init__(self, spec: WorkerSpec, options: WorkerOptions):
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
        self.joined = False  # True: we joined a cluster someone else started
        self._owns_ray = False
        self._dead: set[int] = set()  # id() of actors found dead, never given work again

    # ---- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        import ray

        serial = self.options.strategy == "serial"
        per_worker = 2 if serial else 1
        choice = None if ray.is_initialized() else cluster.choose_cluster(
            self.options.ray_address)
        if self.spec.backend == "vllm" and not (choice and choice.join):
            from llm_evo.evaluation.vllm_backend import require_vllm

            require_vllm()  # on a cluster we join, the workers check for themselves
        spec = self._reshard(self.spec)
        if choice is not None:
            self._connect(choice, per_worker)
        n_gpus = self.spec.gpus_per_worker
        gpu_workers = cluster.gpu_workers(cluster.node_gpus(), n_gpus, self.options.num_gpus)
        self.use_gpu = gpu_workers > 0
        cpus = int(ray.cluster_resources().get("CPU", 1))
        if self.use_gpu:
            if self.spec.in_memory and self.spec.backend == "hf" and n_gpus > 1:
                raise ConfigError(
                    "evaluation.in_memory keeps the hf backend's model on one GPU; with "
                    f"evaluation.gpus_per_worker {n_gpus} score on disk, or use --vllm")
            # Each GPU worker also takes a CPU (2 with its merger): never more than fit.
            n_workers = max(1, min(gpu_workers, cpus // per_worker))
            per_actor = {"num_gpus": n_gpus, "num_cpus": 1}
            threads = None
        else:
            if n_gpus > 1:
                self._say(f"evaluation.gpus_per_worker {n_gpus}: the Ray cluster has no GPU "
                          "to give; the workers score on CPUs")
            n_workers = self.options.num_workers or max(1, min(4, cpus // per_worker))
            per_actor = {"num_cpus": 1}
            threads = max(1, cpus // (n_workers * per_worker))
        if cpus < n_workers * per_worker:  # only a joined cluster can be this small
            raise ConfigError(
                f"{n_workers} worker(s) need {n_workers * per_worker} CPUs"
                f"{' (a merger and an evaluator each)' if serial else ''}, but the Ray "
                f"cluster has {cpus}: lower --num-workers")
        spec = spec if threads is None else _with_threads(spec, threads)
        from llm_evo.evaluation.worker import EvalWorker, MergeWorker

        restarts = dict(max_restarts=self.options.max_restarts, max_task_retries=1)
        eval_cls = ray.remote(**restarts)(EvalWorker)
        if serial:
            self._start_pairs(ray, eval_cls, ray.remote(**restarts)(MergeWorker), spec,
                              n_workers, per_actor)
        else:
            self.actors = [eval_cls.options(**per_actor).remote(spec, f"w{i}",
                                                                owns_process=True)
                           for i in range(n_workers)]
        try:
            self.worker_info = ray.get([a.info.remote() for a in self.actors])
            ray.get([m.pid.remote() for m in self.mergers])
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start is fatal
            raise RuntimeError(f"evaluation workers failed to start: {exc}") from exc
        for info in self.worker_info:
            if info.get("warning"):
                self._say(info["warning"])
        from llm_evo.resolve import refuse_unknown_tasks

        refuse_unknown_tasks(sorted({t for info in self.worker_info
                                     for t in info["unknown_tasks"]}))

    def _connect(self, choice: cluster.ClusterChoice, per_worker: int) -> None:
        """Join the cluster the options, RAY_ADDRESS or `ray start` name, else start ours."""
        choice = cluster.connect(
            choice,
            num_cpus=max(os.cpu_count() or 1, per_worker * (self.options.num_workers or 1)),
            init_kwargs=dict(include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING,
                             runtime_env={"env_vars": WORKER_ENV}))
        self._owns_ray = True  # we called ray.init: shutdown() disconnects (or stops ours)
        self.joined = choice.join
        if choice.note:
            self._say(choice.note)

    def _say(self, message: str) -> None:
        if self.options.echo is not None:
            self.options.echo(message)
        else:
            log.warning("%s", message)

    def _start_pairs(self, ray, eval_cls, merge_cls, spec: WorkerSpec, n_workers: int,
                     per_actor: dict) -> None:
        """One placement group per worker: its merger and its evaluator on one node."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        eval_bundle = {"CPU": 1, **({"GPU": per_actor["num_gpus"]} if self.use_gpu else {})}
        for i in range(n_workers):
            pg = placement_group([{"CPU": 1}, eval_bundle], strategy="STRICT_PACK")
            self.placement_groups.append(pg)
            try:
                ray.get(pg.ready(), timeout=120)
            except Exception as exc:  # noqa: BLE001 - e.g. GetTimeoutError
                raise ConfigError(
                    f"--strategy serial: cannot place worker {i} (needs {eval_bundle} plus "
                    f"1 CPU for its merger on one node): {first_line(exc)}") from None

            def on(bundle: int, pg=pg) -> PlacementGroupSchedulingStrategy:
                return PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle)

            self.mergers.append(merge_cls.options(num_cpus=1, scheduling_strategy=on(0))
                                .remote(spec, f"m{i}"))
            self.actors.append(eval_cls.options(**per_actor, scheduling_strategy=on(1))
                               .remote(spec, f"w{i}", owns_process=True))

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
        """Evaluate `jobs` with the scheduling strategy, calling `on_result` as each finishes.

        Raises WorkersLostError when every worker has died (a stopped cluster, a killed
        raylet): the jobs not finished by then are not reported, so a resumed run does them.
        """
        from llm_evo.evaluation import schedulers

        jobs = list(jobs)
        live = [i for i, a in enumerate(self.actors) if id(a) not in self._dead
                and (not self.mergers or id(self.mergers[i]) not in self._dead)]
        if jobs and not live:
            raise WorkersLostError(schedulers.LOST)
        if self.options.strategy == "serial":
            schedulers.run_serial([(self.mergers[i], self.actors[i]) for i in live], jobs,
                                  on_result, self._alive)
        elif self.options.strategy == "buffered":
            schedulers.run_buffered([self.actors[i] for i in live], jobs, on_result,
                                    self._alive)
        else:
            schedulers.run_next_idle([self.actors[i] for i in live], jobs, on_result, self._alive)

    def _alive(self, actor) -> bool:
        """Whether `actor` answers (after Ray restarted it, if it had to); one that does
        not is remembered as dead and given no more work."""
        import ray

        try:
            ray.get(actor.pid.remote(), timeout=60)
            return True
        except Exception:  # noqa: BLE001 - dead or unreachable
            self._dead.add(id(actor))
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

