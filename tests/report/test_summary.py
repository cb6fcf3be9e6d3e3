"""The end-of-run summary: one score (Σ weight × metric) everywhere, its scale named once,
and how much of an LLM-strategy run the LLM actually drove."""

from __future__ import annotations

from pathlib import Path

from llm_evo.config import parse_config
from llm_evo.report.summary import summary_text
from llm_evo.session.search_loop import RunSummary
from llm_evo.storage import CandidateRecord

A, C = "tiny_skill_arith/acc,none", "tiny_skill_category/acc,none"


def _config(tasks: list) -> object:
    return parse_config({"genome": {"models": ["a", "b"], "merge_method": "linear"},
                         "tasks": tasks})


def _rec(label: str | None, arith: float, cat: float, kind: str = "parent",
         weights: tuple[float, float] = (1.0, 1.0)) -> CandidateRecord:
    score = weights[0] * arith + weights[1] * cat
    return CandidateRecord(generation=-1 if kind == "parent" else 2, idx=0, kind=kind,
                           label=label, genotype=None, merge_config="merge_method: linear\n",
                           results={A: arith, C: cat}, score=score, status="ok", error=None,
                           raw_score=score)


def _summary(parents, best, usage=None) -> RunSummary:
    return RunSummary(run_id=1, best=best, parents=parents, evaluations=8, failed=0,
                      elapsed=3.0, best_config_path=Path("best_config.yaml"),
                      final_model_path=None, llm_usage=usage)


def test_the_summary_shows_the_weighted_sum_and_names_its_scale_once() -> None:
    config = _config([{"name": "tiny_skill_arith", "weight": 2.0}, "tiny_skill_category"])
    w = (2.0, 1.0)
    parents = [_rec("ft_arith", 0.9, 0.2, weights=w), _rec("ft_category", 0.3, 0.8, weights=w)]
    best = _rec(None, 0.85, 0.75, kind="candidate", weights=w)
    text = summary_text(_summary(parents, best), config)
    assert text.count("score = sum of weight x metric") == 1
    assert "the best possible is 3 " in text
    header = next(line for line in text.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "tiny_skill_arith", "tiny_skill_category", "score"]
    best_row = next(line for line in text.splitlines() if line.startswith("best merge (gen 3)"))
    assert best_row.split()[-1] == "2.4500"  # 2 x 0.85 + 0.75, not the mean 0.8
    assert "best merge score 2.4500 beats the best parent score 2.0000" in text
    assert "mean" not in text


def test_one_task_with_two_metrics_gets_two_columns() -> None:
    config = _config([{"name": "t", "metric": "acc,none"}, {"name": "t", "metric": "f1,none"}])
    rec = CandidateRecord(generation=0, idx=0, kind="candidate", label=None, genotype=None,
                          merge_config="", results={"t/acc,none": 0.5, "t/f1,none": 0.25},
                          score=0.75, status="ok", error=None, raw_score=0.75)
    text = summary_text(_summary([], rec), config)
    header = next(line for line in text.splitlines() if line.startswith("model"))
    assert header.split() == ["model", "t/acc", "t/f1", "score"]


def test_llm_usage_is_said_in_the_summary() -> None:
    config = _config(["tiny_skill_arith", "tiny_skill_category"])
    best = _rec(None, 0.5, 0.5, kind="candidate")
    text = summary_text(_summary([], best, usage=(5, 7)), config)
    assert "LLM proposals used: 5 of 7 generations (2 fell back" in text
    assert "LLM proposals" not in summary_text(_summary([], best), config)
