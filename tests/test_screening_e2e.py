"""A real screened run on the tiny family (Ray, mergekit in memory, lm-eval, IRT anchors)
through the CLI, as configs/screening.yml sets it: most candidates are scored on the anchor
items only, the promoted ones on every item, the ledger says which is which, and only a
fully scored candidate becomes best_config.yaml; the report and bad input know about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_evo.storage import RunStorage
from tests.cli.helpers import assert_one_line_error, cli
from tests.e2e_helpers import shipped_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
KEYS = ("tiny_skill_arith/acc,none", "tiny_skill_category/acc,none")


def _config(tmp: Path, tiny_family: dict, **search) -> Path:
    return shipped_config("screening.yml", tiny_family, tmp, search)


@pytest.fixture(scope="module")
def screened_run(tmp_path_factory, tiny_family, ray_head):
    tmp = tmp_path_factory.mktemp("screened")
    storage = tmp / "run"
    proc = cli("llm-evo", "run", str(_config(tmp, tiny_family, max_generations=3)),
               "--storage-path", str(storage), "--quiet", "--no-save-final-model",
               env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage


def test_most_candidates_cost_their_anchors_only(screened_run):
    with RunStorage(screened_run) as db:
        cands = db.candidates(1, kind="candidate")
        parents = db.candidates(1, kind="parent")
        items = db.items(1)
        events = db.events(1, kind="screening")
    assert len(cands) == 24 and len(events) == 3
    full = [c for c in cands if c.status == "ok"]
    estimated = [c for c in cands if c.status == "estimated"]
    assert len(full) == 6 and len(estimated) == 18  # a quarter of each generation promoted
    for e in events:
        assert e["items_per_candidate"] == 16 and len(e["promoted"]) == 2
    # a promoted candidate's items are the full subset, the parents' subset, every item once
    subset = {k: items[(-1, 0)][k]["ids"] for k in KEYS}
    for c in full:
        got = items[(c.generation, c.idx)]
        assert {k: got[k]["ids"] for k in KEYS} == subset
        assert c.results == {k: pytest.approx(sum(got[k]["values"]) / 80) for k in KEYS}
    for c in estimated:
        got = items[(c.generation, c.idx)]
        assert all(len(got[k]["ids"]) == 8 and set(got[k]["ids"]) <= set(subset[k])
                   for k in KEYS)
        assert all(0 <= c.results[k] <= 1 for k in KEYS)
    assert all(p.status == "ok" and len(items[(-1, p.idx)][KEYS[0]]["ids"]) == 80
               for p in parents)


def test_best_config_comes_from_a_fully_scored_candidate(screened_run):
    with RunStorage(screened_run) as db:
        cands = db.candidates(1, kind="candidate")
        best = db.best(1)
    assert best.status == "ok"
    assert best.raw_score == max(c.raw_score for c in cands if c.status == "ok")
    assert (screened_run / "best_config.yaml").read_text() == best.merge_config


def test_report_says_which_scores_are_estimates(screened_run):
    proc = cli("llm-evo", "report", str(screened_run))
    assert proc.returncode == 0, proc.stderr
    summary = (screened_run / "report/summary.md").read_text()
    assert "24 candidates (0 failed, 18 screened out (anchor items only, score estimated))" \
        in summary
    assert "## Item by item: the best merge against each parent" in summary


def test_screening_without_parents_is_one_line_exit_2(tmp_path, tiny_family):
    config = _config(tmp_path, tiny_family, evaluate_parents=False)
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "s"))
    assert_one_line_error(proc, "evaluation.screening needs search.evaluate_parents")
    assert not (tmp_path / "s" / "llm_evo.sqlite").exists()


def test_validate_prints_the_screening(tmp_path, tiny_family):
    proc = cli("llm-evo", "validate", str(_config(tmp_path, tiny_family)))
    assert proc.returncode == 0, proc.stderr
    assert ("screening: 8 irt anchor item(s) per task first; the best 0.25 of each "
            "generation scored on every item") in proc.stdout
