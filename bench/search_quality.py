"""Which strategy wins at small budgets: median best score at 16, 32, 48 and 96 evaluations.

Every strategy searches the same real merges with the same evaluator (one in-memory
EvalWorker: real mergekit merges, real lm-eval scores, no Ray, so the seeds run
back to back in one process), population 8, over several seeds. Genomes:
- tiny-easy: the tiny family, 2 layer groups x 2 models (4 genes);
- tiny-hard: the tiny family, one layer per group with filters [self_attn, mlp]
  (8 layers x 3 filters x 2 models = 48 genes);
- smol: configs/smol.yml's genome on the SmolLM2-135M family (9 genes; slow: ~13 s a
  candidate on 2 cores).
The score is mergekit-evolve's weighted sum (max 2 on the tiny family, 3 on smol); its
standard error is the binomial one of the median-best merge's task accuracies.

Run from the repo root after `make models` (and `make smol-family` for smol):
``python bench/search_quality.py [--genomes tiny-easy,tiny-hard] [--strategies
cma,ctf,ctf-gp,random,tpe,gp,nsga2] [--seeds 5] [--budgets 16,32,48,96] [--limit 40] [--markdown]
[--json F]``; ``--first-seed N --threads T`` split the seeds over processes on a
larger machine, and ``--combine F.json ...`` prints one table from their files. The llm
strategy (and llm-original, LLM-Evo-Merge's design: the LLM's
mean for the whole generation, no trust region; and llm-blocks, EvoLLM's block-wise
queries, one request per --block-rows rows) needs a server: ``--local-llm`` starts
the local SmolLM2-135M llama.cpp server (`make demo`'s), or ``--llm-url URL --llm-model
NAME`` names one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

POPULATION = 8


def genome_of(name: str):
    """(genome, task names, task folder) of a named benchmark genome."""
    import yaml

    from llm_evo.config import GenomeConfig
    from llm_evo.genome import Genome

    if name.startswith("tiny"):
        root = Path(os.environ.get("LLM_EVO_TINY_FAMILY", REPO / "models/tiny"))
        models = [str(root / m) for m in ("ft_arith", "ft_category")]
        extra = ({"layer_granularity": 4} if name == "tiny-easy" else
                 {"layer_granularity": 1, "filters": ["self_attn", "mlp"]})
        cfg = GenomeConfig(models=models, merge_method="task_arithmetic",
                           base_model=str(root / "base"), normalize=False, **extra)
        tasks = ("tiny_skill_arith", "tiny_skill_category")
        return Genome(cfg, models, str(root / "base"), 8), tasks, root / "tasks"
    smol = yaml.safe_load((REPO / "configs/smol.yml").read_text())
    g = smol["genome"]
    models = [str(REPO / m) for m in g["models"]]
    cfg = GenomeConfig(**{**g, "models": models, "base_model": str(REPO / g["base_model"])})
    tasks = tuple(t["name"] for t in smol["tasks"])
    return (Genome(cfg, models, str(REPO / g["base_model"]), 30), tasks,
            REPO / "models/smol/tasks")


def worker_for(tasks, task_dir: Path, limit: int, threads: int = 2):
    from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec
    from llm_evo.evaluation.worker import EvalWorker

    spec = WorkerSpec(tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in tasks),
                      task_search_paths=(str(task_dir),), merge_dir="/tmp/llm-evo-sq",
                      limit=limit, batch_size=32, torch_threads=threads, in_memory=True,
                      dtype="float32")
    return EvalWorker(spec, "bench")


def search(strategy, genome, worker, budget: int) -> tuple[list[float], list[dict]]:
    """Best-so-far after each evaluation, and every result."""
    from llm_evo.evaluation.jobs import Job

    best, curve, results = -math.inf, [], []
    gen = 0
    while len(curve) < budget:
        xs = strategy.ask()
        scores, objectives = [], []
        for i, x in enumerate(xs):
            res = worker.evaluate(Job(gen, i, merge_config=genome.merge_config_dict(
                x, dtype="float32")))
            ok = res.status == "ok"
            scores.append(res.score if ok else None)
            objectives.append(list(res.results.values()) if ok else None)
            if ok and res.score > best:
                best = res.score
            curve.append(best)
            results.append(res.results if ok else None)
        if getattr(strategy, "n_objectives", 1) > 1:
            strategy.tell(xs, scores, objectives=objectives)
        else:
            strategy.tell(xs, scores)
        gen += 1
    return curve[:budget], results


def binomial_se(results: dict, n: int) -> float:
    return math.sqrt(sum(p * (1 - p) / n for p in results.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--genomes", default="tiny-easy,tiny-hard")
    ap.add_argument("--strategies", default="cma,ctf,ctf-gp,random,tpe,gp,nsga2")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first-seed .. first-seed+seeds-1 (to split seeds over processes)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the evaluator")
    ap.add_argument("--generations-per-level", type=int,
                    help="ctf, ctf-gp: generations per tied level (default: the strategy's)")
    ap.add_argument("--budgets", default="16,32,48,96")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--llm-url")
    ap.add_argument("--llm-model")
    ap.add_argument("--local-llm", action="store_true",
                    help="serve SmolLM2-135M with llama.cpp for the llm strategy")
    ap.add_argument("--block-rows", type=int, default=2,
                    help="llm-blocks: rows (layer groups) per block-wise query")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json")
    ap.add_argument("--combine", nargs="+", metavar="JSON",
                    help="print one table from the --json files of runs split by seed")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine, [int(b) for b in args.budgets.split(",")], args.markdown)
        return
    if args.local_llm:
        from llm_evo.local_llm import MODEL_NAME, local_llm_server

        with local_llm_server() as url:
            args.llm_url, args.llm_model = url, MODEL_NAME
            run(args)
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    from llm_evo.strategies import STRATEGIES, make_strategy

    budgets = [int(b) for b in args.budgets.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"population {POPULATION}, {args.seeds} seeds, limit {args.limit}", flush=True)
    rows, raw = [], {}
    for gname in args.genomes.split(","):
        genome, tasks, task_dir = genome_of(gname)
        worker = worker_for(tasks, task_dir, args.limit, args.threads)
        for sname in args.strategies.split(","):
            t0 = time.perf_counter()
            curves, finals = [], []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                kw = {"seed": seed, "population_size": POPULATION}
                if sname == "nsga2":
                    kw["n_objectives"] = len(tasks)
                if sname.startswith("ctf") and args.generations_per_level:
                    kw["generations_per_level"] = args.generations_per_level
                if sname.startswith("llm"):  # llm-original: LLM-Evo-Merge's design
                    from llm_evo.config import LLMConfig

                    variants = {"llm-original": {"best_share": 0.0, "trust_region": False},
                                "llm-blocks": {"block_rows": args.block_rows}}
                    kw.update(base_url=args.llm_url, model=args.llm_model, api_key="none",
                              llm=LLMConfig(**variants.get(sname, {})))
                base = sname if sname in STRATEGIES else sname.split("-")[0]
                strategy = make_strategy(base, genome.space, **kw)
                strategy.start()
                curve, results = search(strategy, genome, worker, max(budgets))
                curves.append(curve)
                best_i = int(np.argmax([c if c is not None else -1 for c in curve]))
                finals.append(results[best_i])
                entry = {"genes": genome.n_genes, "limit": args.limit,
                         "seeds": list(range(args.first_seed, seed + 1)),
                         "curves": curves, "finals": finals,
                         "s_per_seed": (time.perf_counter() - t0) / len(curves)}
                raw[f"{gname}/{sname}"] = entry
                if args.json:  # after every seed, so a run cut short keeps what it finished
                    Path(args.json).write_text(json.dumps(raw))
            rows.append(table_row(f"{gname}/{sname}", entry, budgets))
            print(" | ".join(rows[-1]), flush=True)
    print_table(rows, budgets, args.markdown)


def table_row(key: str, entry: dict, budgets: list[int]) -> list[str]:
    """genome, genes, strategy, the median best at each budget, the SE of the median-best
    merge's score at (about) 48 evaluations, seconds per seed."""
    curves, finals = entry["curves"], entry["finals"]
    med = {b: float(np.median([c[b - 1] for c in curves])) for b in budgets}
    i48 = min(budgets, key=lambda b: abs(b - 48))
    order = np.argsort([c[i48 - 1] for c in curves])
    median_final = finals[int(order[len(order) // 2])] or {}
    se = binomial_se(median_final, entry["limit"]) if median_final else float("nan")
    gname, sname = key.split("/")
    return [gname, str(entry["genes"]), sname, *(f"{med[b]:.3f}" for b in budgets),
            f"{se:.3f}", f"{entry['s_per_seed']:.0f}"]


def print_table(rows: list[list[str]], budgets: list[int], markdown: bool) -> None:
    header = ["genome", "genes", "strategy", *(f"best@{b}" for b in budgets), "SE",
              "s/seed"]
    print(markdown_table(header, rows) if markdown else "\n".join(
        " | ".join(r) for r in [header, *rows]))


def combine(paths: list[str], budgets: list[int], markdown: bool) -> None:
    """One table from the --json files of runs that split the seeds between them."""
    merged: dict[str, dict] = {}
    for path in paths:
        for key, entry in json.loads(Path(path).read_text()).items():
            into = merged.setdefault(key, {**entry, "curves": [], "finals": [], "seeds": [],
                                           "s_per_seed": 0.0})
            n = len(into["seeds"])
            into["s_per_seed"] = ((into["s_per_seed"] * n + entry["s_per_seed"]
                                   * len(entry["seeds"])) / (n + len(entry["seeds"])))
            for name in ("curves", "finals", "seeds"):
                into[name] += entry[name]
    for key, entry in merged.items():
        print(f"{key}: seeds {sorted(entry['seeds'])}; best at {budgets[-1]} per seed "
              f"{[round(c[budgets[-1] - 1], 3) for c in entry['curves']]}")
    print_table([table_row(k, e, budgets) for k, e in merged.items()], budgets, markdown)


if __name__ == "__main__":
    main()
