"""`llm-evo run` on the real SmolLM2 family, on disk and in memory, then `report`,
`mergekit-yaml` on the best config and lm-eval's CLI on the merged model."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.cli.helpers import BIN, cli
from tests.e2e_helpers import candidate_rows
from tests.smol.conftest import write_smol_config

pytestmark = pytest.mark.slow
LIMIT = 16


def smol_tasks() -> tuple[str, ...]:
    return ("smol_science", "smol_society", "smol_health")


@pytest.fixture(scope="module")
def disk_run(smol, tmp_path_factory, ray_head) -> dict:
    tmp = tmp_path_factory.mktemp("smol_disk")
    config = write_smol_config(tmp, smol, limit=LIMIT)
    storage = tmp / "run"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage), env=ray_head.env)
    return {"tmp": tmp, "config": config, "storage": storage, "proc": proc}


def test_run_on_disk_scores_parents_and_merges(disk_run):
    proc, storage = disk_run["proc"], disk_run["storage"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parent ft_science" in proc.stdout and "parent base" in proc.stdout
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    parents = dict(db.execute("SELECT label, score FROM candidates WHERE kind='parent'"))
    assert set(parents) == {"base", "ft_science", "ft_society", "ft_health"}
    # each fine-tune knows its own domain: it beats the base on the summed score
    assert all(parents[m] > parents["base"] for m in ("ft_science", "ft_society", "ft_health"))
    rows = candidate_rows(storage, "status, score, results_json")
    assert sorted(rows) == [(0, 0), (0, 1)]
    for status, score, results in rows.values():
        assert status == "ok" and 0 <= score <= 3
        assert set(json.loads(results)) == {f"{t}/acc,none" for t in smol_tasks()}


def test_report_and_best_config_through_mergekit_yaml_and_lm_eval(disk_run, smol):
    storage, tmp = disk_run["storage"], disk_run["tmp"]
    assert disk_run["proc"].returncode == 0
    report = cli("llm-evo", "report", str(storage))
    assert report.returncode == 0, report.stderr
    assert "ft_health" in (storage / "report" / "summary.md").read_text()

    out = tmp / "best"
    merge = subprocess.run([str(BIN / "mergekit-yaml"), str(storage / "best_config.yaml"),
                            str(out)], capture_output=True, text=True, timeout=600)
    assert merge.returncode == 0, merge.stderr[-2000:]

    db = sqlite3.connect(storage / "llm_evo.sqlite")
    best = db.execute("SELECT results_json FROM candidates WHERE kind='candidate' AND "
                      "status='ok' ORDER BY score DESC LIMIT 1").fetchone()[0]
    want = json.loads(best)
    proc = subprocess.run(
        [str(BIN / "lm_eval"), "run", "--model", "hf", "--model_args",
         f"pretrained={out},dtype=float32", "--tasks", ",".join(smol["tasks"]),
         "--include_path", str(smol["tasks_dir"]),
         "--limit", str(LIMIT), "--batch_size", "16", "--output_path", str(tmp / "lm_eval")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(next((tmp / "lm_eval").rglob("results_*.json")).read_text())["results"]
    for task in smol["tasks"]:
        assert got[task]["acc,none"] == pytest.approx(want[f"{task}/acc,none"], abs=1e-9), task

    # transformers loads the merge with its embeddings still tied, and lm-eval's accuracy
    # on the generated tasks (seeded order, first LIMIT items) equals the family builder's
    # own next-token accuracy: the YAMLs score what the builder measured
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.conftest import _load_script

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    builder, skills = _load_script("make_smol_family"), _load_script("smol_skills")
    tokenizer = AutoTokenizer.from_pretrained(out)
    for task in smol["family"]["tasks"].values():
        items = [skills.Item(r["text"], tuple(r["choices"]), r["gold"]) for r in (
            json.loads(line) for line in Path(task["data"]).open())][:LIMIT]
        mine = builder.accuracy(model, tokenizer, items)
        assert got[task["name"]]["acc,none"] == pytest.approx(mine, abs=1 / LIMIT), task


def test_in_memory_run_scores_the_same_candidates_alike(disk_run, smol, tmp_path, ray_head):
    assert disk_run["proc"].returncode == 0
    config = write_smol_config(tmp_path, smol, limit=LIMIT,
                               extra={"search": {"evaluate_parents": False}})
    storage = tmp_path / "mem"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage), "--in-memory",
               env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_disk = candidate_rows(disk_run["storage"], "genotype_json, results_json")
    in_memory = candidate_rows(storage, "genotype_json, results_json")
    assert sorted(in_memory) == sorted(on_disk)
    for key, (genotype, results) in in_memory.items():
        assert genotype == on_disk[key][0]  # same seed, same candidates
        mem, disk = json.loads(results), json.loads(on_disk[key][1])
        for task in smol["tasks"]:
            key = f"{task}/acc,none"
            assert mem[key] == pytest.approx(disk[key], abs=1 / LIMIT), (key, mem, disk)
