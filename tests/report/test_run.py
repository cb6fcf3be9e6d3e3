"""`llm_evo.report.run` over ledgers written through RunStorage, as the controller writes them.

Merge configs come from a real Genome (`to_yaml`), so the report's layer-count inference is
exercised on the same YAML a run stores; no model files exist anywhere.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_evo.config import RunConfig
from llm_evo.errors import ConfigError
from llm_evo.genome import Genome
from llm_evo.report.run import load_run, write_report
from llm_evo.storage import CandidateRecord, RunStorage, open_ledger

TASKS = ("tiny_skill_arith", "tiny_skill_category")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    head = path.read_bytes()[:24]
    if head[:8] != PNG_MAGIC or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


def make_config(method: str = "ties", *, filters: list[str] | None = None, models: int = 3,
                granularity: int = 4, smooth: bool = False, kinship_penalty: float = 0.0,
                strategy: str = "llm", generations: int = 10) -> RunConfig:
    names = [f"/models/ft_{i}" for i in range(models)]
    genome: dict[str, Any] = {"models": names, "merge_method": method,
                              "layer_granularity": granularity, "smooth": smooth}
    if method != "slerp":
        genome["base_model"] = "/models/base"
    if filters:
        genome["filters"] = filters
    return RunConfig.model_validate({
        "genome": genome,
        "tasks": [{"name": TASKS[0], "weight": 1.0}, {"name": TASKS[1], "weight": 0.5}],
        "search": {"strategy": strategy, "population_size": 8, "max_generations": generations},
        "kinship": {"penalty": kinship_penalty, "threshold": 0.9},
    })


def build_run(root: Path, config: RunConfig, *, num_layers: int = 32, generations: int = 6,
              population: int = 8, kinship: bool = True, failures: bool = True,
              status: str = "finished", seed: int = 0) -> tuple[RunStorage, int, Genome]:
    """A run ledger as the controller leaves it: parents, generations, events, status."""
    g = config.genome
    genome = Genome(g, g.models, g.base_model, num_layers)
    storage = RunStorage(root)
    run_id = storage.create_run(config.canonical_json(), config.config_hash(), 7,
                                {"llm-evo": "test"})
    rng = np.random.default_rng(seed)
    keys = [f"{t.name}/{t.metric}" for t in config.tasks]
    parents = [*genome.models] + ([g.base_model] if g.base_model else [])
    for i, model in enumerate(parents):
        res = {k: float(rng.uniform(0.2, 0.5)) for k in keys}
        storage.record(run_id, CandidateRecord(
            -1, i, "parent", Path(model).name, None, None, res, _score(config, res), "ok",
            None, t_eval=float(rng.uniform(5, 8)), t_total=float(rng.uniform(8, 9)),
            worker=f"w{i % 2}"))
    for gen in range(generations):
        for idx in range(population):
            genotype = rng.uniform(genome.space.lower, genome.space.upper)
            if failures and (gen, idx) in ((1, 3), (4, 0)):
                storage.record(run_id, CandidateRecord(
                    gen, idx, "candidate", None, genotype.tolist(), None, None, None, "failed",
                    "RuntimeError: CUDA out of memory while merging | layer 7", t_merge=0.4,
                    t_total=0.5, worker="w0"))
                continue
            res = {k: float(np.clip(rng.normal(0.35 + 0.03 * gen, 0.08), 0, 1)) for k in keys}
            raw = _score(config, res)
            kin = float(rng.uniform(0.8, 1.0)) if kinship else None
            penalty = config.kinship.penalty * max(0.0, (kin or 0) - config.kinship.threshold)
            storage.record(run_id, CandidateRecord(
                gen, idx, "candidate", None, genotype.tolist(), genome.to_yaml(genotype), res,
                raw - penalty, "ok", None, t_merge=float(rng.uniform(0.2, 1.5)),
                t_eval=float(rng.uniform(2, 4)), t_total=float(rng.uniform(4.2, 6)),
                worker=f"w{idx % 2}", raw_score=raw, kinship=kin))
        storage.add_events(run_id, [
            {"kind": "llm_exchange", "generation": gen, "prompt": "...", "response": "{}",
             "thought": f"generation {gen}: shift weight to late layers", "attempt": 1,
             "error": None, "outcome": "accepted", "response_format": "json_object"},
            {"kind": "sigma", "generation": gen, "sigma": 0.1, "improved": True, "reason": "x"},
        ])
    storage.set_status(run_id, status)
    return storage, run_id, genome


def _score(config: RunConfig, res: dict[str, float]) -> float:
    return sum(t.weight * res[f"{t.name}/{t.metric}"] for t in config.tasks)


def _best(storage: RunStorage, run_id: int) -> CandidateRecord:
    best = storage.best(run_id)
    if best is None:
        raise AssertionError("the fixture run has no best candidate")
    return best


def test_report_writes_pngs_and_summary(tmp_path: Path) -> None:
    config = make_config("ties", filters=["self_attn", "mlp"], kinship_penalty=0.5)
    storage, run_id, genome = build_run(tmp_path / "run", config)
    best = _best(storage, run_id)

    report = write_report(tmp_path / "run")

    assert report.out_dir == tmp_path / "run" / "report"
    assert set(report.plots) == {"scores", "genome", "kinship", "times"}
    for path in report.plots.values():
        width, height = png_size(path)
        assert 400 <= width <= 2000 and 250 <= height <= 1500, (path.name, width, height)
        assert path.stat().st_size > 10_000  # something was drawn, not an empty canvas
    summary = report.summary.read_text()
    assert f"{best.raw_score:.4f}" in summary
    assert "| **best merge** (gen" in summary
    assert "| parent ft_0 |" in summary and "| parent base |" in summary
    assert "**finished**" in summary
    assert "48 candidates (2 failed), 4 parents" in summary
    assert "ties of ft_0, ft_1, ft_2 (base base); 32 layers in 8 group(s), 144 genes" in summary
    assert "```yaml\n" + best.merge_config.rstrip() + "\n```" in summary
    for name in ("scores", "genome", "kinship", "times"):
        assert f"]({name}.png)" in summary
    assert "CUDA out of memory" in summary
    assert "\\| layer 7" in summary  # a | in an error would break the Markdown list/table
    assert "6 exchange(s), 0 fallback(s)" in summary
    assert genome.n_genes == 144


def test_rebuilt_genome_matches_the_run(tmp_path: Path) -> None:
    config = make_config("ties", filters=["self_attn"])
    storage, run_id, genome = build_run(tmp_path / "run", config, num_layers=16)
    view = load_run(open_ledger(tmp_path / "run"), run_id)
    assert view.genome is not None
    assert [a.label for a in view.genome.space.axes] == [a.label for a in genome.space.axes]
    assert view.genome.num_layers == 16
    assert view.notes == []


@pytest.mark.parametrize(("label", "config", "layers"), [
    ("slerp", make_config("slerp", models=2, granularity=8), 32),
    ("smooth", make_config("task_arithmetic", smooth=True, granularity=8), 32),
    ("one-group", make_config("linear", granularity=0, models=4), 12),
    ("negative", make_config("task_arithmetic", models=2).model_copy(update={
        "genome": make_config("task_arithmetic", models=2).genome.model_copy(
            update={"allow_negative_weights": True})}), 8),
])
def test_report_other_genome_shapes(tmp_path: Path, label: str, config: RunConfig,
                                    layers: int) -> None:
    storage, run_id, genome = build_run(tmp_path / label, config, num_layers=layers,
                                        generations=3, kinship=False, failures=False)
    report = write_report(tmp_path / label, out_dir=tmp_path / f"out-{label}")
    view = load_run(open_ledger(tmp_path / label))
    assert view.genome is not None and view.genome.n_genes == genome.n_genes
    for path in report.plots.values():
        png_size(path)
    assert f"{_best(storage, run_id).raw_score:.4f}" in report.summary.read_text()


def test_no_kinship_is_a_note_not_a_crash(tmp_path: Path) -> None:
    storage, run_id, _ = build_run(tmp_path / "run", make_config("ties"), kinship=False)
    report = write_report(tmp_path / "run")
    assert png_size(report.plots["kinship"])[0] > 400
    assert report.summary.exists()


def test_run_with_parents_only(tmp_path: Path) -> None:
    """A run interrupted before its first generation still gets a report."""
    storage, run_id, _ = build_run(tmp_path / "run", make_config("ties"), generations=0,
                                   status="interrupted")
    report = write_report(tmp_path / "run")
    summary = report.summary.read_text()
    assert "No candidate finished successfully yet." in summary
    assert "**interrupted**" in summary
    assert "no stored merge config" in summary  # noted, not raised
    for path in report.plots.values():
        png_size(path)


def test_choose_run_and_out_dir(tmp_path: Path) -> None:
    config = make_config("ties", generations=10)
    storage, first, _ = build_run(tmp_path / "run", config, generations=2, seed=1)
    second = storage.create_run(config.canonical_json(), config.config_hash(), 8, {})
    report = write_report(tmp_path / "run", out_dir=tmp_path / "r1", run_id=first)
    assert report.run_id == first and report.out_dir == tmp_path / "r1"
    assert f"# llm-evo report: run {first}" in report.summary.read_text()
    latest = write_report(tmp_path / "run", out_dir=tmp_path / "r2")
    assert latest.run_id == second
    assert "No candidate finished successfully yet." in latest.summary.read_text()
    with pytest.raises(ConfigError, match=r"no run 9 \(runs: 1, 2\)"):
        write_report(tmp_path / "run", run_id=9)


def test_stale_config_still_reports(tmp_path: Path) -> None:
    """A ledger whose stored config no longer validates still gives plots, unlabelled."""
    config = make_config("ties")
    storage, run_id, _ = build_run(tmp_path / "run", config, generations=2)
    data = json.loads(config.canonical_json())
    data["search"]["retired_option"] = True
    storage.conn.execute("UPDATE runs SET config_json = ? WHERE id = ?",
                         (json.dumps(data), run_id))
    report = write_report(tmp_path / "run")
    summary = report.summary.read_text()
    assert "the stored config no longer validates" in summary
    assert f"{_best(storage, run_id).raw_score:.4f}" in summary


def _bad_path(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "missing"
    path = tmp_path / kind
    if kind == "file":
        path.write_text("not a folder")
        return path
    path.mkdir()
    if kind == "junk":
        (path / RunStorage.FILENAME).write_text("not sqlite")
    return path


@pytest.mark.parametrize("kind", ["missing", "empty", "junk", "file"])
def test_bad_storage_paths(tmp_path: Path, kind: str) -> None:
    path = _bad_path(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        write_report(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not (tmp_path / "missing").exists()  # a report never creates a ledger
    assert not (tmp_path / "empty" / RunStorage.FILENAME).exists()


def test_empty_ledger(tmp_path: Path) -> None:
    RunStorage(tmp_path / "run").close()
    with pytest.raises(ConfigError, match="holds no runs"):
        write_report(tmp_path / "run")


def test_ledger_file_path_is_accepted(tmp_path: Path) -> None:
    build_run(tmp_path / "run", make_config("ties"), generations=1)
    report = write_report(tmp_path / "run" / RunStorage.FILENAME)
    assert report.out_dir == tmp_path / "run" / "report"
    assert not math.isnan(png_size(report.plots["scores"])[0])
