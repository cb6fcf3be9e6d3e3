"""kinship, kinship-matrix, mix and pool on the real SmolLM2 fine-tunes."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file, save_file

from tests.cli.helpers import cli

pytestmark = pytest.mark.slow


def numpy_reference(base: Path, a: Path, b: Path) -> dict[str, float]:
    """cs, pcc and ed of the two task vectors, in float64 NumPy, each tensor once."""
    sa, sb, sab, saa, sbb, sdd, n = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    tb, ta, tt = (load_file(str(p / "model.safetensors")) for p in (base, a, b))
    assert set(tb) == set(ta) == set(tt)
    for name, w in tb.items():
        da = ta[name].astype(np.float64).ravel() - w.astype(np.float64).ravel()
        db = tt[name].astype(np.float64).ravel() - w.astype(np.float64).ravel()
        sa, sb, n = sa + da.sum(), sb + db.sum(), n + da.size
        sab, saa, sbb = sab + da @ db, saa + da @ da, sbb + db @ db
        sdd += (da - db) @ (da - db)
    cov = sab - sa * sb / n
    return {
        "cs": sab / np.sqrt(saa * sbb),
        "pcc": cov / np.sqrt((saa - sa * sa / n) * (sbb - sb * sb / n)),
        "ed": float(np.sqrt(sdd)),
    }


def kinship_json(*args: str) -> dict:
    proc = cli("llm-evo", "kinship", *args, "--metrics", "cs,pcc,ed", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def with_explicit_lm_head(src: Path, dest: Path) -> Path:
    """A copy that stores the tied output embedding under its own name too, as some exports
    do: kinship must still count the tensor once."""
    dest.mkdir()
    for f in src.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, dest / f.name)
    tensors = load_file(str(src / "model.safetensors"))
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def test_kinship_equals_numpy_float64_with_tied_embeddings_once(smol, tmp_path):
    base, a, b = smol["base"], smol["models"]["ft_science"], smol["models"]["ft_society"]
    want = numpy_reference(base, a, b)
    got = kinship_json(str(a), str(b), str(base))
    for metric, value in want.items():
        assert got["metrics"][metric] == pytest.approx(value, abs=1e-6), metric
    n_params = got["elements_compared"]
    assert 134_000_000 < n_params < 135_000_000  # the 28M-element embedding once
    # related but distinct skills: the task vectors are neither orthogonal nor identical
    assert 0.05 < got["metrics"]["cs"] < 0.95

    copies = [with_explicit_lm_head(p, tmp_path / p.name) for p in (a, b, base)]
    again = kinship_json(*map(str, copies))
    assert again["report"]["tied"] == ["lm_head.weight = model.embed_tokens.weight"] or (
        again["report"]["counts"]["tied"] == 1), again["report"]
    assert again["elements_compared"] == n_params
    for metric, value in want.items():
        assert again["metrics"][metric] == pytest.approx(value, abs=1e-6), metric


def test_kinship_matrix_over_the_three_finetunes(smol):
    names = list(smol["models"])
    proc = cli("llm-evo", "kinship-matrix", *map(str, smol["models"].values()), "--base",
               str(smol["base"]), "--labels", ",".join(names), "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["labels"] == names
    pair = numpy_reference(smol["base"], smol["models"]["ft_science"],
                           smol["models"]["ft_health"])
    for metric in ("cs", "pcc"):
        matrix = got["metrics"][metric]
        assert matrix[0][2] == pytest.approx(pair[metric], abs=1e-6)
        assert matrix[2][0] == matrix[0][2]


def test_mix_example_data_favours_the_expert(smol, tmp_path):
    rows = [json.loads(line) for line in
            Path(smol["family"]["tasks"]["science"]["data"]).read_text().splitlines()[:24]]
    data = tmp_path / "science.jsonl"
    data.write_text("".join(json.dumps({"input": r["text"],
                                        "output": " " + r["choices"][r["gold"]]}) + "\n"
                            for r in rows))
    models = [str(smol["models"]["ft_science"]), str(smol["models"]["ft_society"])]
    proc = cli("llm-evo", "mix", *models, "--example-data", str(data), "--out",
               str(tmp_path / "mixed"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["losses"][0] < result["losses"][1]
    assert result["weights"][0] > result["weights"][1]
    assert (tmp_path / "mixed" / "config.json").is_file()


def test_pool_merges_the_family(smol, tmp_path, ray_head):
    cfg = {
        "pool": {"models": [str(p) for p in smol["models"].values()],
                 "base_model": str(smol["base"]), "top_k": 2, "max_rounds": 1},
        "tasks": smol["tasks"],
        "limit": 8,
        "apply_chat_template": False,
        "fewshot_as_multiturn": False,
        "evaluation": {"task_search_path": [str(smol["tasks_dir"])], "dtype": "float32"},
    }
    config = tmp_path / "pool.yml"
    config.write_text(yaml.safe_dump(cfg))
    storage = tmp_path / "pool"
    proc = cli("llm-evo", "pool", str(config), "--storage-path", str(storage), env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    db = sqlite3.connect(storage / "llm_evo_pool.sqlite")
    merged = db.execute("SELECT COUNT(*) FROM pool_models WHERE origin = 'merge' "
                        "AND status = 'ok'").fetchone()[0]
    assert merged >= 1  # a real merge of two fine-tunes, scored
    report = cli("llm-evo", "report", str(storage))
    assert report.returncode == 0, report.stderr
    assert "ft_science" in (storage / "report" / "summary.md").read_text()

