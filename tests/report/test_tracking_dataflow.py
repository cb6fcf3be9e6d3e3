"""W&B for a data-flow run (offline mode, read back from the run's files): the best path
in words in the summary, each gene under its slot label in the best genome's table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_evo.config import RunConfig
from llm_evo.dataflow import DataFlowGenome
from llm_evo.report.tracking import make_tracker
from llm_evo.storage import CandidateRecord, RunStorage
from tests.report.test_tracking import offline, offline_runs, read_offline_run, table

__all__ = ["offline"]  # the fixture, shared


def test_a_dataflow_run_logs_its_best_path(offline: Path, tmp_path: Path) -> None:
    config = RunConfig.model_validate({
        "genome": {"models": ["m/a", "m/b"], "merge_method": "passthrough",
                   "dataflow": {"repeats": 1}},
        "tasks": ["t"], "search": {"population_size": 2, "max_generations": 1},
        "wandb": {"enabled": True, "project": "llm-evo-test"}})
    genome = DataFlowGenome(config.genome, list(config.genome.models), 2)
    storage = RunStorage(tmp_path / "run")
    run_id = storage.create_run(config.canonical_json(), config.config_hash(), 7, {})
    x = np.array([0.5, 0.5, -0.5, 0.5, 0.75, 1.0])  # a 0-1, then b 1 at scale 0.75
    for idx, (genotype, score) in enumerate([(genome.space.initial, 0.4), (x, 0.6)]):
        storage.record(run_id, CandidateRecord(
            generation=0, idx=idx, kind="candidate", label=None, genotype=list(genotype),
            merge_config="merge_method: passthrough\n", results={"t/acc,none": score},
            score=score, raw_score=score, kinship=None, status="ok", error=None))
    tracker = make_tracker(config, storage, run_id, genome)
    tracker.start()
    tracker.log_generation(0)
    tracker.finish(None, "finished")
    run_dir = offline_runs(offline)[0]
    run = read_offline_run(run_dir)
    assert run["summary"]["best/path"] == "a 0-1 -> b 1 (x0.75) (3 layers)"
    rows = table(run_dir, run["history"][0]["best/genome"])["data"]
    assert [r[1] for r in rows[:3]] == ["slot 0: a layer 0 / use", "slot 1: a layer 1 / use",
                                        "slot 2: b layer 0 / use"]
    assert rows[4][1:] == ["scale a->b", pytest.approx(0.75)]
