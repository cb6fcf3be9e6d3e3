"""Which Ray cluster a run uses, and how GPUs are split among its workers.

The address order is checked against Ray's own record file (under a RAY_TMPDIR of the
test's) and a real listening or closed port; the GPU split runs real EvalWorkers on a
private Ray cluster that offers 4 logical GPUs (Ray schedules on them whether or not CUDA
exists, so the workers fall back to the CPU), and through the CLI on a `ray start` head.
"""

from __future__ import annotations

import socket
import time

import pytest

from llm_evo.errors import ConfigError
from llm_evo.evaluation import cluster
from llm_evo.evaluation.jobs import Job, TaskSpec, WorkerSpec
from tests.cli.helpers import assert_one_line_error, cli
from tests.e2e_helpers import TASKS, family_dir, write_config


# ---- the address -------------------------------------------------------------------------
@pytest.fixture()
def ray_tmp(tmp_path, monkeypatch):
    """Ray's default temp dir, moved to the test's (where `ray start` records a head)."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray"


@pytest.fixture()
def listening():
    """An address where something accepts connections, as a live head's GCS port does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _closed_port() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


def test_no_address_and_no_record_starts_a_private_cluster(ray_tmp):
    assert cluster.address_file() == str(ray_tmp / "ray_current_cluster")
    choice = cluster.choose_cluster(None)
    assert not choice.join and choice.note is None


def test_a_live_recorded_head_is_joined_through_rays_auto_detection(ray_tmp, listening):
    (ray_tmp / "ray_current_cluster").write_text(listening)
    choice = cluster.choose_cluster(None)
    # address None: ray.init() finds the head itself (and the token it may expect)
    assert choice.join and choice.address is None
    assert listening in choice.note and "--ray-address local" in choice.note


def test_a_dead_recorded_head_is_reported_and_a_private_cluster_used(ray_tmp):
    dead = _closed_port()
    (ray_tmp / "ray_current_cluster").write_text(dead)
    started = time.monotonic()
    choice = cluster.choose_cluster(None)
    assert time.monotonic() - started < 5  # a probe, not Ray's minute of retries
    assert not choice.join
    assert dead in choice.note and "private local cluster" in choice.note
    assert str(ray_tmp / "ray_current_cluster") in choice.note


def test_flag_beats_ray_address_beats_the_record(ray_tmp, listening, monkeypatch):
    (ray_tmp / "ray_current_cluster").write_text(listening)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.9:6379")
    choice = cluster.choose_cluster(None)
    assert choice.join and choice.address == "10.0.0.9:6379" and choice.source == "RAY_ADDRESS"
    choice = cluster.choose_cluster("10.0.0.7:6379")
    assert choice.join and choice.address == "10.0.0.7:6379"
    assert not cluster.choose_cluster("local").join  # a private cluster, whatever runs here


def test_an_address_where_nothing_answers_is_one_line(tmp_path, tiny_family):
    import os

    config = write_config(tmp_path, tiny_family, population=2, generations=1)
    dead = _closed_port()
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "a"),
               "--ray-address", dead, "--quiet", timeout=300)
    assert_one_line_error(proc, f"--ray-address {dead}", "no Ray cluster answers")
    env = {**os.environ, "RAY_ADDRESS": dead}
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "b"),
               "--quiet", env=env, timeout=300)
    assert_one_line_error(proc, f"RAY_ADDRESS={dead}", "no Ray cluster answers")


# ---- GPUs per worker ----------------------------------------------------------------------
def test_gpu_workers_fit_on_single_nodes():
    assert cluster.gpu_workers([4], 2, None) == 2
    assert cluster.gpu_workers([2, 2], 2, None) == 2
    assert cluster.gpu_workers([3, 1], 2, None) == 1  # the odd GPUs make no worker
    assert cluster.gpu_workers([4], 2, 2) == 1  # --num-gpus 2
    assert cluster.gpu_workers([0, 0], 2, None) == 0  # no GPU: CPU workers
    with pytest.raises(ConfigError, match="gpus_per_worker is 3, but no Ray node has more "
                                          "than 2 GPU"):
        cluster.gpu_workers([2, 2], 3, None)  # 4 GPUs in all, but never 3 on one node
    with pytest.raises(ConfigError, match="--num-gpus allows only 1"):
        cluster.gpu_workers([4], 2, 1)


@pytest.fixture(scope="module")
def four_gpu_cluster():
    """A private cluster (never one running on the machine) offering 4 logical GPUs."""
    import ray

    ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False,
             log_to_driver=False)
    yield
    ray.shutdown()


def _spec(tiny_family, tmp_path, gpus_per_worker: int) -> WorkerSpec:
    root = family_dir(tiny_family)
    return WorkerSpec(tasks=(TaskSpec(TASKS[0], 1.0, "acc,none"),),
                      task_search_paths=(str(root / "tasks"),), merge_dir=str(tmp_path),
                      limit=8, gpus_per_worker=gpus_per_worker)


@pytest.mark.slow
def test_two_gpus_per_worker_on_four_gpus_makes_two_workers(four_gpu_cluster, tiny_family,
                                                            tmp_path):
    import ray

    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    said: list[str] = []
    workers = WorkerSet(_spec(tiny_family, tmp_path, 2), WorkerOptions(echo=said.append))
    workers.start()
    try:
        infos = workers.worker_info
        assert len(infos) == 2 and workers.use_gpu
        ids = [set(i["gpu_ids"]) for i in infos]  # what Ray reserved for each actor
        assert all(len(g) == 2 for g in ids) and ids[0] | ids[1] == {"0", "1", "2", "3"}
        assert ray.available_resources().get("GPU", 0) == 0
        # no CUDA here: each worker says so once and scores on the CPU
        assert all(i["device"] == "cpu" for i in infos)
        assert sum("torch sees no CUDA device" in m for m in said) == 2
        got = []
        root = family_dir(tiny_family)
        workers.run([Job(-1, 0, model_path=str(root / "ft_arith"), kind="parent")], got.append)
        assert len(got) == 1 and got[0].status == "ok" and 0 <= got[0].score <= 1
    finally:
        workers.shutdown()


def test_more_gpus_per_worker_than_any_node_has_fails_before_any_actor(four_gpu_cluster,
                                                                      tiny_family, tmp_path):
    import ray

    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    free = ray.available_resources().get("GPU", 0)
    workers = WorkerSet(_spec(tiny_family, tmp_path, 8), WorkerOptions())
    started = time.monotonic()
    with pytest.raises(ConfigError, match="gpus_per_worker is 8, but no Ray node has more "
                                          "than 4 GPU"):
        workers.start()
    assert time.monotonic() - started < 30  # an error, not a wait for resources
    assert workers.actors == [] and ray.available_resources().get("GPU", 0) == free


@pytest.mark.slow
def test_gpus_per_worker_through_the_cli_on_a_ray_start_head(tmp_path, tiny_family):
    from tests.ray_helpers import start_head, stop_head

    head = start_head(num_cpus=2, num_gpus=4)
    try:
        config = write_config(tmp_path, tiny_family, population=2, generations=1, limit=8,
                              extra={"evaluation": {"gpus_per_worker": 8},
                                     "search": {"evaluate_parents": False}})
        proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "big"),
                   "--quiet", env=head.env, timeout=300)
        # the one line is the error; the notice that the head was joined goes before it
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[-1].startswith("error: evaluation.gpus_per_worker is 8, but no Ray "
                                    "node has more than 4 GPU")
        config = write_config(tmp_path, tiny_family, population=2, generations=1, limit=8,
                              extra={"evaluation": {"gpus_per_worker": 2},
                                     "search": {"evaluate_parents": False}})
        proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "two"),
                   "--quiet", env=head.env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "workers: 2 on cpu" in proc.stderr
        assert len(head.worker_logs("EvalWorker")) == 2
    finally:
        stop_head(head.root)


# ---- losing workers -----------------------------------------------------------------------
class _Worker:
    """Stands in for EvalWorker (and MergeWorker): a job takes `float(job.label)` seconds."""

    def pid(self) -> int:
        import os

        return os.getpid()

    def evaluate(self, job: Job, prefetch: Job | None = None):
        from llm_evo.evaluation.jobs import JobResult

        time.sleep(float(job.label))
        return JobResult(job.generation, job.idx, "ok", score=1.0)

    def evaluate_merged(self, job: Job, staged):
        return self.evaluate(job)

    def merge(self, job: Job):
        from llm_evo.evaluation.backends import Staged, job_key

        return Staged(job_key(job), 0.0)

    def drop_prefetch(self) -> None:
        pass

    def discard(self, staged) -> None:
        pass


def _lose_workers(strategy: str, kill_after: int, kill_all: bool):
    """Run 6 jobs on 2 stand-in workers; after `kill_after` results, kill worker 0 for good
    (or every worker). Returns what was reported and the error raised, if any."""
    import ray

    from llm_evo.evaluation import schedulers

    cls = ray.remote(max_restarts=0)(_Worker)
    actors = [cls.options(num_cpus=0).remote() for _ in range(2)]
    mergers = [cls.options(num_cpus=0).remote() for _ in range(2)]
    ray.get([a.pid.remote() for a in actors + mergers])
    got = []

    def on_result(res) -> None:
        got.append(res)
        if len(got) == kill_after:
            for actor in actors if kill_all else actors[:1]:
                ray.kill(actor, no_restart=True)

    def alive(actor) -> bool:
        try:
            ray.get(actor.pid.remote(), timeout=10)
            return True
        except Exception:  # noqa: BLE001 - dead
            return False

    jobs = [Job(0, i, label="0.5") for i in range(6)]
    try:
        if strategy == "serial":
            schedulers.run_serial(list(zip(mergers, actors, strict=True)), jobs, on_result,
                                  alive)
        else:
            run = {"pool": schedulers.run_next_idle, "buffered": schedulers.run_buffered}
            run[strategy](actors, jobs, on_result, alive)
    except Exception as exc:  # noqa: BLE001 - returned for the test to check
        return got, exc
    finally:
        for actor in actors + mergers:
            ray.kill(actor, no_restart=True)
    return got, None


@pytest.mark.parametrize("strategy", ["pool", "buffered", "serial"])
def test_a_job_whose_worker_died_for_good_is_tried_on_another(four_gpu_cluster, strategy):
    got, error = _lose_workers(strategy, kill_after=1, kill_all=False)
    assert error is None
    assert sorted(r.idx for r in got) == list(range(6)) and all(r.status == "ok" for r in got)


@pytest.mark.parametrize("strategy", ["pool", "buffered", "serial"])
def test_losing_every_worker_raises_and_reports_nothing_unfinished(four_gpu_cluster, strategy):
    from llm_evo.errors import WorkersLostError

    got, error = _lose_workers(strategy, kill_after=2, kill_all=True)
    assert isinstance(error, WorkersLostError) and "run the same command again" in str(error)
    # the two finished jobs were reported; none of the jobs cut short is recorded as failed
    assert len(got) == 2 and all(r.status == "ok" for r in got)
