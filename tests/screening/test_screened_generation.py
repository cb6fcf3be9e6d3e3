"""A screened generation's logic on planted responses: which candidates are promoted, what the
ledger marks, what the strategy is told, and that best_config.yaml never comes from an
estimate. The evaluations are a table of planted per-item answers (`PlantedWorkers`), so a
candidate can be made to look good on its anchors and be bad on the rest; the real workers
run the same code in tests/test_screening_e2e.py."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from llm_evo.config import parse_config
from llm_evo.evaluation.jobs import Job, JobResult
from llm_evo.genome import Genome
from llm_evo.screening.estimator import promoted
from llm_evo.session.options import RunOptions
from llm_evo.session.screening import run_screened, screener_for
from llm_evo.session.search_loop import SearchLoop
from llm_evo.storage import CandidateRecord

TASKS = ("ta", "tb")
IDS = list(range(40))


class PlantedWorkers:
    """Answers every job from `answers[(generation, idx)][task]` (40 values per task) on
    exactly the doc ids the job asks for."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers
        self.asked: list[Job] = []

    def run(self, jobs, on_result) -> None:
        for job in jobs:
            self.asked.append(job)
            table = self.answers[(job.generation, job.idx)]
            items = {f"{t}/acc,none": {"ids": list(job.samples[t]),
                                       "values": [table[t][i] for i in job.samples[t]]}
                     for t in TASKS}
            on_result(JobResult(job.generation, job.idx, "ok", score=0.0, items=items))


class Progress:
    def update(self, *args, **kw) -> None:
        pass


def _loop(tmp_path: Path, promote: float = 0.5) -> SearchLoop:
    config = parse_config({
        "genome": {"models": ["m/a", "m/b"], "merge_method": "linear", "layer_granularity": 2},
        "tasks": list(TASKS),
        "search": {"strategy": "random", "population_size": 4, "seed": 3},
        "evaluation": {"screening": {"anchors": 4, "promote": promote,
                                     "anchor_method": "random"}},
    })
    genome = Genome(config.genome, ["m/a", "m/b"], None, 4)
    loop = SearchLoop(config, genome, RunOptions(storage_path=str(tmp_path)))
    loop.run_id = loop.storage.create_run(config.canonical_json(), config.config_hash(), 3, {})
    return loop


def _items(table: dict) -> dict:
    return {f"{t}/acc,none": {"ids": IDS, "values": list(table[t])} for t in TASKS}


def _parents(loop: SearchLoop, rng: np.random.Generator) -> None:
    for i in range(3):
        table = {t: (rng.random(40) < 0.5).astype(float) for t in TASKS}
        loop.storage.record(loop.run_id, CandidateRecord(
            -1, i, "parent", f"p{i}", None, None, {f"{t}/acc,none": table[t].mean()
                                                   for t in TASKS},
            float(sum(table[t].mean() for t in TASKS)), "ok", None, items=_items(table)))


def _generation(loop: SearchLoop, answers: dict, n: int = 4):
    rng = np.random.default_rng(0)
    genotypes = [rng.uniform(loop.genome.space.lower, loop.genome.space.upper)
                 for _ in range(n)]
    configs = {i: loop.genome.to_yaml(g, "float32") for i, g in enumerate(genotypes)}
    jobs = [Job(0, i, merge_config=loop.genome.merge_config_dict(g, "float32"))
            for i, g in enumerate(genotypes)]
    scores, objectives = [None] * n, [None] * n
    workers = PlantedWorkers(answers)
    run_screened(loop, 0, jobs, genotypes, configs, [], scores, objectives, workers,
                 Progress())
    return workers, scores


def test_good_anchors_bad_rest_is_promoted_scored_and_never_best(tmp_path: Path) -> None:
    loop = _loop(tmp_path)
    _parents(loop, np.random.default_rng(1))
    anchors = screener_for(loop.config, loop.storage, loop.run_id, 0).anchor_samples()
    assert anchors["ta"] != IDS[:4]  # seeded random anchors, not the first items

    def answers_right_on(items_right: dict) -> dict:
        return {t: np.array([1.0 if i in items_right[t] else 0.0 for i in IDS])
                for t in TASKS}

    trap = answers_right_on(anchors)  # every anchor right, every other item wrong
    good = answers_right_on({t: set(IDS) - set(anchors[t][:2]) for t in TASKS})  # 38/40
    meh = answers_right_on({t: set(anchors[t][:1]) for t in TASKS})
    answers = {(0, 0): meh, (0, 1): trap, (0, 2): good, (0, 3): meh}
    workers, scores = _generation(loop, answers)

    recs = {c.idx: c for c in loop.storage.candidates(loop.run_id, generation=0)}
    # anchors: 1.0 for the trap, 0.5 for good, 0.25 for meh: the trap and good are promoted
    assert [recs[i].status for i in range(4)] == ["estimated", "ok", "ok", "estimated"]
    assert recs[1].raw_score == pytest.approx(2 * 4 / 40)  # its full score: anchors only
    assert recs[2].raw_score == pytest.approx(2 * 38 / 40)
    full = loop.storage.items(loop.run_id)[(0, 1)]["ta/acc,none"]
    assert full["ids"] == IDS  # anchors and the rest, every item once
    assert loop.best is not None and loop.best.idx == 2
    assert (tmp_path / "best_config.yaml").read_text() == recs[2].merge_config
    # the strategy is told full scores where there are some, the estimate otherwise
    assert scores == [pytest.approx(recs[i].score) for i in range(4)]
    assert scores[0] == pytest.approx(0.5) and scores[1] == pytest.approx(0.2)
    # items scored: 4 x 8 anchors, then 2 x 72 for the promoted
    assert sum(len(j.samples["ta"]) + len(j.samples["tb"]) for j in workers.asked) == 176
    (event,) = loop.storage.events(loop.run_id, kind="screening")
    assert event["promoted"] == [1, 2] and event["items_per_candidate"] == 8


def test_a_resumed_generation_promotes_the_same_and_scores_nothing_twice(tmp_path) -> None:
    loop = _loop(tmp_path)
    _parents(loop, np.random.default_rng(1))
    rng = np.random.default_rng(5)
    answers = {(0, i): {t: (rng.random(40) < 0.3 + 0.15 * i).astype(float) for t in TASKS}
               for i in range(4)}
    _generation(loop, answers)
    first = {c.idx: (c.status, c.score) for c in loop.storage.candidates(loop.run_id, 0)}
    # as after a kill between the two passes: the promoted slots are back to estimates
    (event,) = loop.storage.events(loop.run_id, kind="screening")
    anchors = screener_for(loop.config, loop.storage, loop.run_id, 0).anchor_samples()
    for idx in event["promoted"]:
        rec = next(c for c in loop.storage.candidates(loop.run_id, 0) if c.idx == idx)
        full = loop.storage.items(loop.run_id)[(0, idx)]
        only_anchors = {}
        for key, got in full.items():
            keep = [k for k, i in enumerate(got["ids"]) if i in anchors[key.split("/")[0]]]
            only_anchors[key] = {"ids": [got["ids"][k] for k in keep],
                                 "values": [got["values"][k] for k in keep]}
        loop.storage.record(loop.run_id, replace(
            rec, status="estimated", score=event["estimates"][idx],
            raw_score=event["estimates"][idx], items=only_anchors))
    rng2 = np.random.default_rng(0)
    genotypes = [rng2.uniform(loop.genome.space.lower, loop.genome.space.upper)
                 for _ in range(4)]
    workers = PlantedWorkers(answers)
    scores = [None] * 4
    run_screened(loop, 0, [], genotypes, {}, [], scores, [None] * 4, workers, Progress())
    assert sorted(j.idx for j in workers.asked) == event["promoted"]  # only the second pass
    again = {c.idx: (c.status, c.score) for c in loop.storage.candidates(loop.run_id, 0)}
    assert again == first


def test_promotion_rule() -> None:
    assert promoted([0.5, None, 0.9, 0.5], 0.5) == [0, 2]  # ties: the earlier slot
    assert promoted([0.1, 0.2], 0.01) == [1]  # at least one
    assert promoted([None, None], 1.0) == []
