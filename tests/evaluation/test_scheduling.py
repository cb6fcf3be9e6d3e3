"""pool / buffered / serial scheduling on a local Ray cluster.

The first two tests drive the schedulers with stand-in actors whose jobs only sleep, so the
timing is known and "no worker idles while a job is unstarted" can be checked exactly.
The others run the real workers (mergekit, lm-eval) under every strategy, in memory and
on disk, and check they all give the same scores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llm_evo.evaluation.backends import Staged, job_key
from llm_evo.evaluation.jobs import Job, JobResult, TaskSpec, WorkerSpec
from tests.e2e_helpers import FAMILY, TASKS, family_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


class SleepyWorker:
    """Stands in for EvalWorker: a job sleeps `float(job.label)` seconds."""

    def __init__(self, name: str):
        self.name = name

    def pid(self) -> int:
        import os

        return os.getpid()

    def evaluate(self, job: Job, prefetch: Job | None = None) -> JobResult:
        started = time.time()
        time.sleep(float(job.label))
        return JobResult(job.generation, job.idx, "ok", score=started, worker=self.name)

    def evaluate_merged(self, job: Job, staged: Staged) -> JobResult:
        return self.evaluate(job)

    def drop_prefetch(self) -> None:
        pass

    def discard(self, staged: Staged) -> None:
        pass


class SleepyMerger:
    def merge(self, job: Job) -> Staged:
        time.sleep(0.05)
        return Staged(job_key(job), 0.05)

    def pid(self) -> int:
        import os

        return os.getpid()


def _sleepy_jobs() -> list[Job]:
    # one long job, then short ones: the worker with the long job reserves (or queues)
    # job 1, and the other worker must take it over instead of going idle.
    return [Job(0, i, label=str(d)) for i, d in enumerate([4.0, 0.3, 0.3, 0.3, 0.3])]


def _run(strategy: str, actors, jobs):
    from llm_evo.evaluation import schedulers

    got: dict[int, JobResult] = {}

    def on_result(res: JobResult) -> None:
        assert res.idx not in got, "a job was reported twice"
        got[res.idx] = res

    def alive(actor) -> bool:
        return True

    t0 = time.time()
    if strategy == "serial":
        schedulers.run_serial(actors, jobs, on_result, alive)
    else:
        getattr(schedulers, f"run_{strategy}")(actors, jobs, on_result, alive)
    return got, time.time() - t0


@pytest.mark.parametrize("strategy", ["buffered", "serial"])
def test_no_worker_idles_while_a_job_is_unstarted(ray_cluster, strategy):
    import ray

    worker = ray.remote(SleepyWorker)
    if strategy == "serial":
        merger = ray.remote(SleepyMerger)
        actors = [(merger.remote(), worker.remote(f"w{i}")) for i in range(2)]
    else:
        actors = [worker.remote(f"w{i}") for i in range(2)]
    ray.get([(a[1] if isinstance(a, tuple) else a).pid.remote() for a in actors])
    got, elapsed = _run(strategy, actors, _sleepy_jobs())
    assert sorted(got) == [0, 1, 2, 3, 4] and all(r.status == "ok" for r in got.values())
    assert got[0].worker == "w0"
    # w1 finishes its short jobs long before w0's 4 s job ends, then takes over the job
    # that was reserved for (buffered) or queued behind (serial) that long job, instead
    # of idling while it waits: every short job ran on w1, during w0's long one.
    assert [got[i].worker for i in range(1, 5)] == ["w1"] * 4
    assert max(got[i].score for i in range(1, 5)) < got[0].score + 4.0
    assert elapsed < 4.0 + 2.0


@pytest.fixture(scope="module")
def spec(tiny_family, tmp_path_factory) -> WorkerSpec:
    root = family_dir(tiny_family)
    return WorkerSpec(tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in TASKS),
                      task_search_paths=(str(root / "tasks"),),
                      merge_dir=str(tmp_path_factory.mktemp("merges")),
                      limit=12, shuffle=True, seed=5, batch_size=32)


@pytest.fixture(scope="module")
def jobs(tiny_family) -> list[Job]:
    import numpy as np

    from llm_evo.config import GenomeConfig
    from llm_evo.genome import Genome

    root = family_dir(tiny_family)
    models = [str(root / m) for m in FAMILY]
    genome = Genome(GenomeConfig(models=models, merge_method="task_arithmetic",
                                 base_model=str(root / "base"), layer_granularity=4,
                                 normalize=False), models, str(root / "base"), 8)
    rng = np.random.default_rng(0)
    out = [Job(-1, 0, model_path=str(root / "ft_arith"), kind="parent")]
    out += [Job(0, i, merge_config=genome.merge_config_dict(rng.uniform(0, 1, genome.n_genes),
                                                           "float32"))
            for i in range(1, 5)]
    return out


def _scores(spec: WorkerSpec, jobs: list[Job], strategy: str, workers: int):
    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    worker_set = WorkerSet(spec, WorkerOptions(num_workers=workers, strategy=strategy))
    worker_set.start()
    try:
        got: dict[int, JobResult] = {}
        worker_set.run(jobs, lambda r: got.__setitem__(r.idx, r))
        subsets = worker_set.subsets()
    finally:
        worker_set.shutdown()
    assert sorted(got) == [j.idx for j in jobs]
    assert all(r.status == "ok" for r in got.values()), [r.error for r in got.values()]
    return {i: r.score for i, r in got.items()}, got, subsets


def test_every_strategy_gives_the_same_scores(ray_cluster, spec, jobs):
    from dataclasses import replace

    mem = replace(spec, in_memory=True)
    pool, _, subsets = _scores(mem, jobs, "pool", 2)
    # two workers in two processes drew the same fixed, seeded subset of examples
    assert len(subsets) == 2 and subsets[0] == subsets[1] and subsets[0] is not None
    buffered, res, _ = _scores(mem, jobs, "buffered", 2)
    assert buffered == pytest.approx(pool, abs=1e-9)
    assert {r.worker for r in res.values()} == {"w0", "w1"}
    # merged in the background while the previous job was scored: hardly waited for
    assert any(r.t_merge_wait < r.t_merge for r in res.values() if r.t_merge)
    serial, res, _ = _scores(spec, jobs, "serial", 1)  # on disk, merge beside eval
    assert serial == pytest.approx(pool, abs=1e-9)
    assert not list(Path(spec.merge_dir).iterdir())  # every merge was deleted after use


def test_a_run_in_memory_with_buffered_scheduling(tmp_path, tiny_family, ray_cluster):
    """The controller wiring: evaluation.in_memory and --strategy buffered reach the workers."""
    from llm_evo.config import load_config
    from llm_evo.resolve import build_genome
    from llm_evo.session.options import RunOptions
    from llm_evo.session.search_loop import SearchLoop
    from llm_evo.storage import RunStorage
    from tests.e2e_helpers import write_config

    path = write_config(tmp_path, tiny_family, population=3, generations=1, limit=10,
                        extra={"evaluation": {"in_memory": True},
                               "search": {"evaluate_parents": False}})
    config = load_config(path)
    messages: list[str] = []
    summary = SearchLoop(config, build_genome(config),
                         RunOptions(storage_path=str(tmp_path / "s"), num_workers=2,
                                    scheduling="buffered", quiet=True),
                         echo=messages.append).run()
    assert summary.evaluations == 3 and summary.failed == 0
    assert not any("not implemented" in m for m in messages)
    cands = RunStorage(tmp_path / "s").candidates(summary.run_id)
    assert all(c.t_merge is not None and c.t_eval > 0 for c in cands)
    assert not (tmp_path / "s" / "merges").exists() or not list(
        (tmp_path / "s" / "merges").iterdir())
