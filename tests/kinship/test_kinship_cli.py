"""The installed console scripts run as a user would: llm-evo kinship, kinship-matrix, merge_cal."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llm_evo.kinship import kinship

BIN = Path(sys.executable).parent


def run(*args: object) -> subprocess.CompletedProcess:
    exe, *rest = (str(a) for a in args)
    return subprocess.run([str(BIN / exe), *rest], capture_output=True, text=True, timeout=300)


def numbers(stdout: str) -> dict[str, float]:
    """Parse `name: value` lines; every stdout line must be one."""
    out = {}
    for line in stdout.strip().splitlines():
        name, value = line.split(": ")
        out[name] = float(value)
    return out


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_kinship_prints_numbers(family):
    p = family["paths"]
    proc = run("llm-evo", "kinship", p["a"], p["b"], p["base"], "--metrics", "cs,pcc,ed")
    assert proc.returncode == 0, proc.stderr
    got = numbers(proc.stdout)
    want = kinship(p["a"], p["b"], p["base"]).metrics
    assert list(got) == ["cs", "pcc", "ed"]
    for m in got:
        assert got[m] == pytest.approx(want[m], abs=1e-6, rel=1e-5)
    assert proc.stderr == ""


def test_kinship_json_split_low_precision_abs(family):
    p = family["paths"]
    proc = run(
        "llm-evo", "kinship", p["a"], p["c"], p["base"], "--metrics", "cs pcc", "--split",
        "--low-precision", "--abs-cosine", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    want = kinship(
        p["a"], p["c"], p["base"], "cs pcc", split=True, low_precision=True, abs_cosine=True
    )
    assert data["metrics"] == pytest.approx(want.metrics, rel=1e-12)
    assert data["mode"] == "split" and data["low_precision"] and data["abs_cosine"]
    assert data["metrics"]["cs"] >= 0
    assert data["tensors_compared"] == 9 and data["tensors_skipped"] == 0
    assert data["report"]["bytes_read"] > 0


def test_merge_cal_reference_order_and_metric_spellings(family):
    p = family["paths"]
    want = kinship(p["a"], p["b"], p["base"], split=True)
    for metric_args in (["cs"], ["cs,pcc,ed"], ["cs pcc ed"], ["cs", "pcc", "ed"]):
        proc = run("merge_cal", p["a"], p["b"], p["base"], *metric_args, "--split-calculation")
        assert proc.returncode == 0, proc.stderr
        got = numbers(proc.stdout)
        assert list(got) == ["cs", "pcc", "ed"][: len(got)]
        for m, v in got.items():
            assert v == pytest.approx(want[m], abs=1e-6, rel=1e-5)
    proc = run("merge_cal", p["a"], p["b"], p["base"], "cs", "--low-precision", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["low_precision"] is True


def test_bad_paths_exit_2_with_one_line(family, tmp_path):
    p = family["paths"]
    missing = tmp_path / "no-such-model"
    assert_one_line_error(
        run("llm-evo", "kinship", p["a"], missing, p["base"]),
        "model path not found",
        "no-such-model",
    )
    assert_one_line_error(run("merge_cal", missing, p["b"], p["base"], "cs"), "no-such-model")
    assert_one_line_error(
        run("llm-evo", "kinship-matrix", p["a"], p["b"], "--base", missing), "no-such-model"
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(run("merge_cal", p["a"], broken, p["base"], "cs"), "model.safetensors")
    assert_one_line_error(
        run("llm-evo", "kinship", p["a"], p["b"], p["base"], "-m", "cs,kl"), "'kl'"
    )


def test_nan_weights_exit_2_naming_the_tensor(ck, family, tmp_path):
    bad = {k: v.clone() for k, v in family["states"]["b"].items()}
    bad["model.norm.weight"][2] = float("nan")
    path = ck.write(tmp_path / "nan-b", bad, torch.bfloat16)
    p = family["paths"]
    proc = run("llm-evo", "kinship", p["a"], path, p["base"])
    assert_one_line_error(proc, "nan-b", "model.norm.weight", "NaN")


def test_all_zero_delta_prints_nan_and_explains(ck, family, tmp_path):
    p = family["paths"]
    proc = run("llm-evo", "kinship", p["base"], p["b"], p["base"])
    assert proc.returncode == 0, proc.stderr
    got = numbers(proc.stdout)
    assert math.isnan(got["cs"]) and math.isnan(got["pcc"]) and got["ed"] > 0
    assert "all zero" in proc.stderr and proc.stderr.startswith("warning: ")


def test_kinship_matrix_writes_csv_json_and_heatmap(family, tmp_path):
    p = family["paths"]
    out_csv, out_json, png = tmp_path / "k.csv", tmp_path / "out" / "k.json", tmp_path / "k.png"
    proc = run(
        "llm-evo", "kinship-matrix", p["a"], p["b"], p["c"], "--base", p["base"],
        "-o", out_csv, "-o", out_json, "--plot", png, "--labels", "A,B,C",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 9 and set(rows[0]) == {"model_a", "model_b", "cs", "pcc", "ed"}
    ab = next(r for r in rows if (r["model_a"], r["model_b"]) == ("A", "B"))
    want = kinship(p["a"], p["b"], p["base"])
    for m in ("cs", "pcc", "ed"):
        assert float(ab[m]) == pytest.approx(want[m], rel=1e-12)
    data = json.loads(out_json.read_text())
    assert data["labels"] == ["A", "B", "C"]
    assert data["metrics"]["cs"][0][1] == pytest.approx(want["cs"], rel=1e-12)
    assert len(data["gram"]) == 3 and data["count"] == want.report.elements_compared
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    # stdout: one labelled table per metric, numbers only
    lines = proc.stdout.splitlines()
    assert lines[0] == "cs:" and lines[1].split() == ["A", "B", "C"]
    assert [float(x) for x in lines[2].split()[1:]][0] == pytest.approx(1.0)


def test_kinship_matrix_needs_two_models(family):
    p = family["paths"]
    assert_one_line_error(
        run("llm-evo", "kinship-matrix", p["a"], "--base", p["base"]), "two models"
    )
