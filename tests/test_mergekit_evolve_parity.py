"""Configs and command lines written for mergekit-evolve (mergekit 0.1.5's evolve.py) run
unchanged, through the real parts: Ray workers, mergekit merges, lm-eval on the tiny family.

Also the parity details that need real merges: --random-seed seeds DARE's masks, and
`base+lora` / `path@revision` references are merged and scored like any model.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.cli.helpers import cli
from tests.e2e_helpers import family_dir, write_config

# Every option of mergekit-evolve's evolve.py with the value this test gives it; together
# with GENOME_CONFIG_PATH, --storage-path and --task-search-path that is all of them but
# --load-in-8bit/--load-in-4bit (bitsandbytes is not installed here: see tests/cli).
MERGEKIT_EVOLVE_FLAGS = [
    "--max-fevals", "16",
    "--no-vllm",
    "-s", "pool",
    "--no-in-memory",
    "--num-gpus", "1",  # none here: the CPU workers
    "--no-merge-cuda",
    "--no-trust-remote-code",
    "--no-allow-crimes",
    "--random-seed", "3",
    "--batch-size", "8",
    "--sigma0", "0.15",
    "--no-wandb",
    "--wandb-project", "unused",
    "--wandb-entity", "unused",
    "--i-understand-the-depths-of-the-evils-i-am-unleashing",
    "--no-save-final-model",
    "--no-reshard",
    "--timeout", "3600",
    "--force-population-size", "8",
]
TWO_METRICS = "tiny_skill_category_2m"


def mergekit_evolve_config(tmp_path: Path, tiny_family: dict) -> tuple[Path, Path]:
    """A config in mergekit-evolve's schema only (no section of ours), naming a model as a
    ModelReference mapping and scoring one task on two metrics; and its task folder."""
    root = family_dir(tiny_family)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / f"{TWO_METRICS}.yaml").write_text(yaml.safe_dump({
        "include": str(root / "tasks" / "tiny_skill_category.yaml"),
        "task": TWO_METRICS,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
    }))
    path = write_config(tmp_path, tiny_family, limit=8)
    cfg = yaml.safe_load(path.read_text())
    del cfg["search"], cfg["evaluation"]
    cfg["genome"]["models"][0] = {"model": {"path": cfg["genome"]["models"][0],
                                            "revision": "main"}}
    cfg["tasks"] = ["tiny_skill_arith",
                    {"name": TWO_METRICS, "metric": "acc,none"},
                    {"name": TWO_METRICS, "metric": "acc_norm,none", "weight": 0.5}]
    path.write_text(yaml.safe_dump(cfg))
    return path, tasks


@pytest.mark.slow
def test_a_mergekit_evolve_command_line_runs_unchanged(tmp_path, tiny_family):
    from mergekit.evo.config import EvolMergeConfiguration

    config, tasks = mergekit_evolve_config(tmp_path, tiny_family)
    EvolMergeConfiguration.model_validate(yaml.safe_load(config.read_text()))  # theirs
    storage = tmp_path / "run"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--task-search-path", str(family_dir(tiny_family) / "tasks"),
               "--task-search-path", str(tasks), *MERGEKIT_EVOLVE_FLAGS)
    assert proc.returncode == 0, proc.stderr[-3000:]

    db = sqlite3.connect(storage / "llm_evo.sqlite")
    cands = db.execute("SELECT generation, status, score, results_json FROM candidates "
                       "WHERE kind='candidate' ORDER BY generation, idx").fetchall()
    assert len(cands) == 16  # --max-fevals 16: two generations of 8
    assert [g for g, *_ in cands] == [0] * 8 + [1] * 8
    parents = {r[0]: r[1] for r in db.execute(
        "SELECT label, status FROM candidates WHERE kind='parent'")}
    assert parents == {"ft_arith@main": "ok", "ft_category": "ok", "base": "ok"}
    stored = json.loads(db.execute("SELECT config_json FROM runs").fetchone()[0])
    search = stored["search"]
    assert (search["max_fevals"], search["population_size"], search["max_generations"],
            search["seed"], search["sigma0"]) == (16, 8, 2, 3, 0.15)
    assert stored["evaluation"]["batch_size"] == 8
    assert stored["genome"]["models"][0].endswith("ft_arith@main")

    ok = [c for c in cands if c[1] == "ok"]
    assert len(ok) >= 15
    for _, _, score, results_json in ok:  # one task, two metrics: both scored, both count
        results = json.loads(results_json)
        assert set(results) == {"tiny_skill_arith/acc,none", f"{TWO_METRICS}/acc,none",
                                f"{TWO_METRICS}/acc_norm,none"}
        assert score == pytest.approx(results["tiny_skill_arith/acc,none"]
                                      + results[f"{TWO_METRICS}/acc,none"]
                                      + 0.5 * results[f"{TWO_METRICS}/acc_norm,none"])
    gen_lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("gen ")]
    assert [ln.split()[1] for ln in gen_lines] == ["1/2", "2/2"]
    assert (storage / "best_config.yaml").is_file()
    assert not (storage / "final_model").exists()  # --no-save-final-model
    assert not (storage / "input_models").exists()  # --no-reshard
    assert not (storage / "wandb").exists()  # --no-wandb


@pytest.mark.slow
def test_timeout_stops_the_search_between_generations(tmp_path, tiny_family, ray_head):
    """mergekit-evolve's --timeout (pycma's): the generation running finishes, no new one
    starts; the run ends normally and a rerun of the same command would continue it."""
    config = write_config(tmp_path, tiny_family, population=2, generations=5, limit=4,
                          extra={"search": {"evaluate_parents": False}})
    storage = tmp_path / "run"
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--timeout", "0.001", "--no-save-final-model", "--quiet", env=ray_head.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--timeout 0.001s reached: stopping after generation 1" in proc.stderr
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    gens = [r[0] for r in db.execute("SELECT generation FROM candidates")]
    assert gens == [0, 0]
    assert db.execute("SELECT status FROM runs").fetchone() == ("finished",)


def _spec(tmp_path: Path, config_dict: dict, seed: int):
    from llm_evo.config import parse_config
    from llm_evo.evaluation.spec import worker_spec

    config = parse_config({**config_dict, "search": {"seed": seed}})
    (tmp_path / "merges").mkdir(exist_ok=True)  # as the worker does
    return worker_spec(config, task_search_paths=[], merge_dir=str(tmp_path / "merges"),
                       seed=config.search.seed, trust_remote_code=False, allow_crimes=False)


def _tensors(staged) -> dict:
    from safetensors.numpy import load_file

    if staged.tensors is not None:
        return {t.name: t.tensor.float().numpy() for t in staged.tensors}
    out: dict = {}
    for f in sorted(Path(staged.path).glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.mark.parametrize("in_memory", [False, True], ids=["on_disk", "in_memory"])
def test_random_seed_seeds_dare_masks(tmp_path, tiny_family, in_memory):
    """As mergekit-evolve's MergeOptions(random_seed=...): the same seed gives the same
    dare_ties merge, another seed another one."""
    from llm_evo.config import parse_config
    from llm_evo.evaluation.backends import DiskBackend, InMemoryBackend
    from llm_evo.evaluation.jobs import Job
    from llm_evo.resolve import build_genome

    config = yaml.safe_load(write_config(tmp_path, tiny_family, method="dare_ties")
                            .read_text())
    config.pop("search")
    genome = build_genome(parse_config(config))
    x = genome.space.initial.copy()
    x[[a.index for a in genome.space.axes if a.param == "density"]] = 0.5
    job = Job(0, 0, merge_config=genome.merge_config_dict(x, "float32"))
    backend_cls = InMemoryBackend if in_memory else DiskBackend

    def merge(seed: int) -> dict:
        backend = backend_cls(_spec(tmp_path, config, seed), "cpu", "float32")
        return _tensors(backend.stage(job))

    a, b, c = merge(5), merge(5), merge(6)
    name = next(n for n in a if "q_proj" in n)
    assert all(np.array_equal(a[n], b[n]) for n in a)
    assert not np.array_equal(a[name], c[name])


def test_lora_and_revision_references_merge_and_score_as_parents(tmp_path, tiny_family):
    """`base+lora` and `path@revision` (mergekit ModelReference forms) go through resolve,
    the genome's merge configs and the parents' passthrough merges."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from llm_evo.config import parse_config
    from llm_evo.evaluation.backends import DiskBackend
    from llm_evo.evaluation.jobs import Job
    from llm_evo.model_ref import parent_job_source
    from llm_evo.resolve import build_genome

    root = family_dir(tiny_family)
    torch.manual_seed(0)
    base_model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    peft_model = get_peft_model(base_model, LoraConfig(
        r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = {k: v.numpy() for k, v in peft_model.merge_and_unload().state_dict().items()}

    config = parse_config({
        "genome": {"models": [f"{root / 'ft_arith'}@main", f"{root / 'base'}+{tmp_path}/adapter"],
                   "merge_method": "task_arithmetic", "base_model": str(root / "base")},
        "tasks": ["tiny_skill_arith"]})
    genome = build_genome(config)
    assert genome.model_labels == ["ft_arith@main", "base+adapter"]
    backend = DiskBackend(_spec(tmp_path, config.model_dump(mode="json"), 1), "cpu",
                          "float32")
    merged = backend.stage(Job(0, 0, merge_config=genome.merge_config_dict(
        genome.space.initial, "float32")))
    assert (Path(merged.path) / "config.json").is_file()

    lora_parent = parent_job_source(genome.models[1], "float32")
    assert lora_parent["merge_config"]["merge_method"] == "passthrough"
    staged = backend.stage(Job(-1, 1, kind="parent", **lora_parent))
    got = {}
    for f in Path(staged.path).glob("*.safetensors"):
        got.update(load_file(str(f)))
    name = next(n for n in got if "q_proj" in n)
    np.testing.assert_allclose(got[name], expected[name], atol=1e-5)
    assert parent_job_source(str(root / "base")) == {"model_path": str(root / "base")}
