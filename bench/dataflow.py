"""Data-flow-space search against parameter-space search on the tiny family, same budget.

For each seed: configs/dataflow/ps.yml (parameter space, task arithmetic), dfs.yml (data
flow over the two fine-tunes) and ps_dfs.yml (data flow over that seed's PS merge and the
fine-tunes), 48 evaluations each on the tasks' first 80 items. Then every best merge and
the parents are scored by the lm-eval CLI on the 120 items per task the searches never
saw (the search picks its best on the first 80, so this is the number free of selection
bias). Prints one table; `--markdown` for docs/performance.md.

    python bench/dataflow.py --seeds 42,43,44 --markdown

`--cost N` instead measures what a data-flow candidate costs on the real SmolLM2 family
(make smol-family): the same seeded gp search over the three fine-tunes (1 repeat x 3
models x 30 layers, at most 64 layers), N candidates on disk and N in memory, where the
worker rebuilds its resident model whenever a path's layer count changes.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TASKS = ("tiny_skill_arith", "tiny_skill_category")
SEARCHED = 80  # the configs' limit: items the search scores


def plain_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))
                     for r in [header, *rows])


def config_for(name: str, out: Path, ps_storage: Path | None) -> Path:
    cfg = yaml.safe_load((REPO / "configs" / "dataflow" / name).read_text())
    cfg["genome"]["models"] = [str(ps_storage) if m.startswith("runs/") else str(REPO / m)
                               for m in cfg["genome"]["models"]]
    if cfg["genome"].get("base_model"):
        cfg["genome"]["base_model"] = str(REPO / cfg["genome"]["base_model"])
    cfg["evaluation"]["task_search_path"] = [str(REPO / "models/tiny/tasks")]
    path = out / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(name: str, seed: int, out: Path, ps_storage: Path | None = None) -> dict:
    storage = out / f"{Path(name).stem}-{seed}"
    if storage.exists():
        shutil.rmtree(storage)
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "llm-evo"), "run", str(config_for(name, out, ps_storage)),
                           "--storage-path", str(storage), "--random-seed", str(seed),
                           "--quiet"], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed: {proc.stderr[-2000:]}")
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    n, failed, best = db.execute(
        "SELECT COUNT(*), SUM(status = 'failed'), MAX(score) FROM candidates "
        "WHERE kind = 'candidate'").fetchone()
    parent = db.execute("SELECT MAX(score) FROM candidates WHERE kind = 'parent'").fetchone()[0]
    return {"storage": storage, "n": n, "failed": failed or 0, "best": best,
            "parent": parent, "wall": time.perf_counter() - started}


def holdout_tasks(work: Path) -> Path:
    """Task YAMLs `<task>_holdout` over the items after the first SEARCHED."""
    folder = work / "holdout_tasks"
    folder.mkdir()
    for task in TASKS:
        src = REPO / "models/tiny/tasks"
        lines = (src / f"{task}.jsonl").read_text().splitlines()[SEARCHED:]
        (folder / f"{task}_holdout.jsonl").write_text("\n".join(lines) + "\n")
        spec = yaml.safe_load((src / f"{task}.yaml").read_text())
        spec["task"] = f"{task}_holdout"
        spec["dataset_kwargs"]["data_files"]["test"] = str(folder / f"{task}_holdout.jsonl")
        (folder / f"{task}_holdout.yaml").write_text(yaml.safe_dump(spec))
    return folder


def holdout_score(model: Path, tasks_dir: Path, work: Path) -> tuple[float, int]:
    """(sum over the tasks of lm-eval's acc on the held-out items, items per task)."""
    out = work / f"lm_eval_{model.name}_{time.monotonic_ns()}"
    proc = subprocess.run(
        [str(BIN / "lm_eval"), "--model", "hf", "--model_args",
         f"pretrained={model},dtype=float32", "--tasks",
         ",".join(f"{t}_holdout" for t in TASKS), "--include_path", str(tasks_dir),
         "--output_path", str(out), "--device", "cpu", "--batch_size", "8"],
        capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lm_eval on {model} failed: {proc.stderr[-2000:]}")
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    n = len((tasks_dir / f"{TASKS[0]}_holdout.jsonl").read_text().splitlines())
    return sum(results[f"{t}_holdout"]["acc,none"] for t in TASKS), n


def merged(storage: Path, work: Path) -> Path:
    out = work / f"best_{storage.name}"
    subprocess.run([str(BIN / "mergekit-yaml"), str(storage / "best_config.yaml"), str(out),
                    "--copy-tokenizer", "--quiet", "--lazy-unpickle"], check=True,
                   capture_output=True)
    return out


def cost(n: int, out: Path, fmt) -> None:
    from llm_evo.evaluation.in_memory import output_layers

    smol = REPO / "models/smol"
    family = json.loads((smol / "family.json").read_text())
    cfg = {"genome": {"models": [str(smol / m) for m in ("ft_science", "ft_society",
                                                          "ft_health")],
                      "merge_method": "passthrough",
                      "dataflow": {"repeats": 1, "max_layers": 64}},
           "tasks": [t["name"] for t in family["tasks"].values()], "limit": 100,
           "apply_chat_template": False, "fewshot_as_multiturn": False,
           "search": {"strategy": "gp", "population_size": 4, "max_fevals": n, "seed": 42,
                      "evaluate_parents": False},
           "evaluation": {"task_search_path": [str(smol / "tasks")], "dtype": "float32",
                          "batch_size": yaml.safe_load((REPO / "configs/smol.yml").read_text())
                          ["evaluation"]["batch_size"]}}
    config = out / "smol_dfs.yml"
    config.write_text(yaml.safe_dump(cfg))
    rows = []
    for mode in ("--no-in-memory", "--in-memory"):
        storage = out / f"smol_dfs{mode}"
        shutil.rmtree(storage, ignore_errors=True)
        proc = subprocess.run([str(BIN / "llm-evo"), "run", str(config), "--storage-path",
                               str(storage), mode, "--quiet", "--no-save-final-model"],
                              capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"smol DFS {mode} failed: {proc.stderr[-2000:]}")
        db = sqlite3.connect(storage / "llm_evo.sqlite")
        got = db.execute("SELECT t_merge, t_eval, t_total, merge_config FROM candidates "
                         "WHERE kind = 'candidate' AND status = 'ok' "
                         "ORDER BY generation, idx").fetchall()
        depths = [output_layers(yaml.safe_load(c)) for *_, c in got]
        merge, ev, total = (sum(r[i] for r in got) / len(got) for i in range(3))
        rows.append([mode.removeprefix("--").replace("no-in-memory", "on disk"),
                     str(len(got)), f"{min(depths)}-{max(depths)}", str(len(set(depths))),
                     f"{merge:.2f}", f"{ev:.2f}", f"{total - merge - ev:.2f}", f"{total:.2f}",
                     f"{(total - ev) / total:.0%}"])
    print(f"SmolLM2-135M, data-flow candidates over 3 fine-tunes, {n} per mode, seconds per "
          "scored candidate (failed ones: paths over max_layers)")
    print(fmt(["mode", "scored", "layers", "distinct depths", "merge", "evaluate",
               "other (load / rebuild / copy)", "total", "non-eval share"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_dataflow")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--cost", type=int, default=None,
                    help="candidates per mode of the SmolLM2 cost measurement")
    args = ap.parse_args()
    fmt = markdown_table if args.markdown else plain_table
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cost:
        cost(args.cost, args.out, fmt)
        return
    work = Path(tempfile.mkdtemp(prefix="dataflow_bench_"))
    try:
        tasks_dir = holdout_tasks(work)
        parents = {m: holdout_score(REPO / "models/tiny" / m, tasks_dir, work)[0]
                   for m in ("ft_arith", "ft_category")}
        rows = []
        for seed in (int(s) for s in args.seeds.split(",")):
            ps = run("ps.yml", seed, args.out)
            runs = {"PS": ps, "DFS": run("dfs.yml", seed, args.out),
                    "PS -> DFS": run("ps_dfs.yml", seed, args.out, ps["storage"])}
            for method, r in runs.items():
                held, n = holdout_score(merged(r["storage"], work), tasks_dir, work)
                se = math.sqrt(sum(p * (1 - p) for p in (held / 2,) * 2) / n)
                rows.append([str(seed), method, str(r["n"]), str(r["failed"]),
                             f"{r['best']:.4f}", f"{r['parent']:.4f}", f"{held:.4f}",
                             f"{max(parents.values()):.4f}", f"{se:.3f}", f"{r['wall']:.0f}"])
                print(f"seed {seed} {method}: search {r['best']:.4f}, held out {held:.4f}",
                      file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"tiny family, {SEARCHED} searched items per task, held-out items after them; "
          "scores are sums over 2 tasks (max 2)")
    print(fmt(["seed", "search", "evals", "failed", "best (searched items)",
               "best source (searched)", "best, held out", "best fine-tune, held out",
               "SE held out", "wall s"], rows))


if __name__ == "__main__":
    main()
