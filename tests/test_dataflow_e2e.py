"""Data-flow-space search end to end (configs/dataflow/, shortened): a parameter-space run,
then PS -> DFS over its best merge and the two fine-tunes through `llm-evo run` (Ray,
mergekit passthrough merges, lm-eval), the report's path plot, and `validate`'s account
of the data-flow axes and its one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llm_evo.evaluation.in_memory import output_layers
from llm_evo.storage import RunStorage
from tests.cli.helpers import assert_one_line_error, cli
from tests.e2e_helpers import candidate_rows, family_dir

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def dataflow_config(name: str, tiny_family: dict, out: Path, ps_storage: Path | None = None,
                    **search) -> Path:
    """configs/dataflow/`name` with absolute paths, a short search and 20 items a task."""
    root = family_dir(tiny_family)
    cfg = yaml.safe_load((REPO / "configs" / "dataflow" / name).read_text())
    cfg["genome"]["models"] = [str(ps_storage) if m.startswith("runs/") else
                               str(root / Path(m).name) for m in cfg["genome"]["models"]]
    if cfg["genome"].get("base_model"):
        cfg["genome"]["base_model"] = str(root / "base")
    cfg["evaluation"]["task_search_path"] = [str(root / "tasks")]
    cfg["limit"] = 20
    cfg["search"].update(search)
    path = out / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def ps_then_dfs(tmp_path_factory, tiny_family, ray_head):
    tmp = tmp_path_factory.mktemp("dataflow")
    ps = tmp / "ps"
    proc = cli("llm-evo", "run", str(dataflow_config("ps.yml", tiny_family, tmp,
                                                     population_size=4, max_generations=1)),
               "--storage-path", str(ps), "--quiet", env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ps / "final_model" / "config.json").is_file()
    config = dataflow_config("ps_dfs.yml", tiny_family, tmp, ps, population_size=4,
                             max_generations=1)
    dfs = tmp / "dfs"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(dfs), "--quiet",
               "--no-save-final-model", env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, ps, dfs, config, proc


def test_one_models_own_path_scores_exactly_that_model(ps_then_dfs):
    """The search starts at the PS merge's own path (optuna's first trial is the genome's
    start point): a passthrough of its layers in order, scored like the model itself."""
    _, _, dfs, _, proc = ps_then_dfs
    with RunStorage(dfs) as db:
        parents = {p.label: p for p in db.candidates(1, kind="parent")}
        cands = db.candidates(1, kind="candidate")
    assert set(parents) == {"ps (best)", "ft_arith", "ft_category"}
    first = next(c for c in cands if (c.generation, c.idx) == (0, 0))
    assert first.status == "ok" and first.results == parents["ps (best)"].results
    assert first.raw_score == parents["ps (best)"].raw_score
    assert len(cands) == 4 and all(c.status in ("ok", "failed") for c in cands)
    merge = yaml.safe_load(first.merge_config)
    assert merge["merge_method"] == "passthrough"
    assert "best merge" in proc.stdout


def test_best_config_merges_with_mergekit_yaml(ps_then_dfs):
    tmp, _, dfs, _, _ = ps_then_dfs
    layers = output_layers(yaml.safe_load((dfs / "best_config.yaml").read_text()))
    out = tmp / "best_merged"
    proc = cli("mergekit-yaml", str(dfs / "best_config.yaml"), str(out), "--lazy-unpickle")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == layers


def test_report_draws_the_best_path(ps_then_dfs):
    tmp, _, dfs, _, _ = ps_then_dfs
    proc = cli("llm-evo", "report", str(dfs), "--out", str(tmp / "report"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp / "report" / "genome.png").stat().st_size > 5000
    summary = (tmp / "report" / "summary.md").read_text()
    assert "passthrough of" in summary and "a path of 24 slots, at most 16 layers" in summary


def test_validate_prints_the_dataflow_axes(ps_then_dfs, tiny_family):
    tmp, _, _, config, _ = ps_then_dfs
    proc = cli("llm-evo", "validate", str(config), "--skip-tasks")
    assert proc.returncode == 0, proc.stderr
    assert "path: 1 repeat(s) x 3 model(s) x layers 0-7 = 24 slots" in proc.stdout
    assert "scales: 6 (one per ordered model pair) in [0.5, 1.5]" in proc.stdout
    assert "genes: 24 use + 6 scale = 30" in proc.stdout
    assert "[ 24] scale ps (best)->ft_arith" in proc.stdout
    dfs = dataflow_config("dfs.yml", tiny_family, tmp)
    assert cli("llm-evo", "validate", str(dfs), "--skip-tasks").returncode == 0


@pytest.mark.parametrize("bad", ["layers", "slots", "hidden size", "no final_model"])
def test_bad_dataflow_input_is_one_line_exit_2(ps_then_dfs, tiny_family, tmp_path, bad):
    _, _, _, config, _ = ps_then_dfs
    cfg = yaml.safe_load(config.read_text())
    flow, models = cfg["genome"]["dataflow"], cfg["genome"]["models"]
    if bad == "layers":
        flow["layers"] = [0, 9]
        needle = "genome.dataflow.layers: [0, 9] is out of range"
    elif bad == "slots":
        flow["repeats"] = 100
        needle = "2400 slots"
    elif bad == "hidden size":
        other = tmp_path / "wide"
        other.mkdir()
        wide = json.loads((Path(models[1]) / "config.json").read_text())
        wide["hidden_size"] *= 2
        (other / "config.json").write_text(json.dumps(wide))
        models[2] = str(other)
        needle = "genome.models[2]: hidden size"
    else:
        (tmp_path / "empty_run").mkdir()
        (tmp_path / "empty_run" / "llm_evo.sqlite").write_bytes(b"")
        models[0] = str(tmp_path / "empty_run")
        needle = "without final_model/"
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump(cfg))
    for command in ("validate", "run"):
        args = ["--skip-tasks"] if command == "validate" else [
            "--storage-path", str(tmp_path / "s")]
        assert_one_line_error(cli("llm-evo", command, str(path), *args), needle)
    assert not (tmp_path / "s" / "llm_evo.sqlite").exists()


def test_in_memory_scores_every_candidate_as_on_disk(ps_then_dfs, tmp_path, ray_head):
    """In memory, the worker's resident model is rebuilt whenever a path's layer count
    changes: the same seeded run scores the same genotypes exactly as on disk."""
    _, _, dfs, config, _ = ps_then_dfs
    storage = tmp_path / "in_memory"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage), "--quiet",
               "--no-save-final-model", "--in-memory", env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    on_disk, in_memory = (candidate_rows(s, "genotype_json, status, results_json")
                          for s in (dfs, storage))
    assert sorted(on_disk) == sorted(in_memory)
    assert on_disk == in_memory
    depths = {output_layers(yaml.safe_load(c.merge_config))
              for c in RunStorage(storage).candidates(1, kind="candidate") if c.merge_config}
    assert len(depths) > 1  # the resident model was rebuilt at more than one depth
