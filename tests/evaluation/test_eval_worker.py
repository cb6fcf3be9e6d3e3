"""The evaluation worker on its own (no Ray): real merges, real lm-eval, failures recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_evo.config import GenomeConfig
from llm_evo.evaluation.jobs import Job, TaskSpec, WorkerSpec
from llm_evo.evaluation.worker import EvalWorker
from llm_evo.genome import Genome
from tests.e2e_helpers import FAMILY, TASKS, family_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def worker(tiny_family, tmp_path_factory):
    root = family_dir(tiny_family)
    spec = WorkerSpec(
        tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in TASKS),
        task_search_paths=(str(root / "tasks"),),
        merge_dir=str(tmp_path_factory.mktemp("merges")),
        limit=30, torch_threads=2,
    )
    return EvalWorker(spec)


@pytest.fixture(scope="module")
def genome(tiny_family):
    root = family_dir(tiny_family)
    models = [str(root / m) for m in FAMILY]
    cfg = GenomeConfig(models=models, merge_method="task_arithmetic",
                       base_model=str(root / "base"), layer_granularity=4)
    return Genome(cfg, models, str(root / "base"), 8)


def test_worker_knows_its_tasks_and_device(worker):
    info = worker.info()
    assert info["unknown_tasks"] == [] and info["device"] == "cpu" and info["dtype"] == "float32"


def test_parent_scores_favour_its_own_skill(worker, tiny_family):
    root = family_dir(tiny_family)
    arith = worker.evaluate(Job(-1, 0, model_path=str(root / "ft_arith"), kind="parent"))
    assert arith.status == "ok", arith.error
    assert arith.results["tiny_skill_arith/acc,none"] > arith.results[
        "tiny_skill_category/acc,none"]
    assert arith.score == pytest.approx(sum(arith.results.values()))


def test_merge_then_score_and_clean_up(worker, genome):
    job = Job(0, 0, merge_config=genome.merge_config_dict(genome.space.initial, "float32"))
    res = worker.evaluate(job)
    assert res.status == "ok", res.error
    assert res.t_merge > 0 and res.t_eval > 0 and res.t_total >= res.t_merge + res.t_eval
    assert not list(Path(worker.spec.merge_dir).iterdir())


def test_failed_merge_is_a_failed_result_not_an_exception(worker, genome, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((Path(genome.models[0]) / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    cfg = genome.merge_config_dict(genome.space.initial, "float32")
    for sl in cfg["slices"]:
        sl["sources"][0]["model"] = str(broken)
    res = worker.evaluate(Job(0, 1, merge_config=cfg))
    assert res.status == "failed" and res.score is None
    assert res.error and len(res.error) < 2100 and "\n" not in res.error.strip()


def test_a_kept_merge_is_written_to_its_out_path(worker, genome, tmp_path):
    """Pool members: merged and scored on the worker, kept where the job says."""
    out = tmp_path / "member"
    cfg = genome.merge_config_dict(genome.space.initial, "float32")
    res = worker.evaluate(Job(1, 0, merge_config=cfg, out_path=str(out), kind="pool"))
    assert res.status == "ok", res.error
    assert res.t_merge > 0 and (out / "config.json").is_file()
    assert not Path(f"{out}.partial").exists()
    assert not list(Path(worker.spec.merge_dir).iterdir())  # nothing in the scratch folder

    # a failed merge leaves neither the folder nor a partial one, and says it never merged
    for sl in cfg["slices"]:
        sl["sources"][0]["model"] = str(tmp_path / "missing")
    bad = tmp_path / "bad"
    res = worker.evaluate(Job(1, 1, merge_config=cfg, out_path=str(bad), kind="pool"))
    assert res.status == "failed" and res.t_merge is None and res.error
    assert not bad.exists() and not Path(f"{bad}.partial").exists()


def test_unknown_metric_fails_the_candidate(tiny_family, tmp_path):
    root = family_dir(tiny_family)
    spec = WorkerSpec(tasks=(TaskSpec(TASKS[0], 1.0, "f1,none"),),
                      task_search_paths=(str(root / "tasks"),), merge_dir=str(tmp_path),
                      limit=5)
    res = EvalWorker(spec).evaluate(Job(-1, 0, model_path=str(root / "base")))
    assert res.status == "failed" and "f1,none" in res.error


def test_every_scored_item_is_kept_and_adds_up_to_the_metric(worker, tiny_family):
    """Per-item results (issue #17): each task's scored items, by lm-eval doc id, whose mean
    is the task's metric."""
    root = family_dir(tiny_family)
    res = worker.evaluate(Job(-1, 1, model_path=str(root / "ft_category"), kind="parent"))
    assert res.status == "ok", res.error
    assert set(res.items) == set(res.results)
    for key, items in res.items.items():
        assert items["ids"] == list(range(30))  # limit 30, no shuffle: lm-eval's first 30
        assert set(items["values"]) <= {0.0, 1.0}
        assert sum(items["values"]) / 30 == pytest.approx(res.results[key])
