"""Fitness at a fraction of the cost (issue #17): how well anchors estimate a candidate's
score, and what a screened search finds at a quarter of the item budget.

1. Estimation: one real gp search scores every candidate on the full subset (real merges,
   real lm-eval, one in-memory EvalWorker, no Ray) and keeps each item's result. Then, for
   each candidate in order, the estimator is fitted on the parents and every earlier
   generation (as a screened run would have them, if it had promoted all of them) and
   estimates the candidate's score from its anchors only: random anchors (their mean)
   against IRT anchors (2PL, p-IRT estimate), at several anchor sizes. Printed: Spearman
   rank correlation and mean absolute error against the full-subset score, and items
   scored per candidate.
2. Search (--search-seeds 0 skips it): median over seeds of the best full-subset score
   found by a plain gp search at the full item budget and at a quarter of it, and by a
   screened gp search (IRT anchors, a quarter of each generation promoted) at a quarter of
   it. On SmolLM2 a seed takes about half an hour on 2 cores: --search-json F keeps each
   finished seed, so the same command run again goes on where it stopped.

Run from the repo root after `make models` (`make smol-family` for --family smol):
``python bench/fitness_estimation.py [--family tiny|smol] [--candidates 64]
[--estimation-seed 0] [--limit 80] [--anchors 4,8,16] [--search-seeds 5] [--budget 48]
[--search-json F] [--save F | --load F] [--markdown]``
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
from search_quality import POPULATION, genome_of

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def make_worker(tasks, task_dir: Path, limit: int, batch_size: int):
    from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec
    from llm_evo.evaluation.worker import EvalWorker

    spec = WorkerSpec(tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in tasks),
                      task_search_paths=(str(task_dir),), merge_dir="/tmp/llm-evo-fe",
                      limit=limit, shuffle=True, seed=0, batch_size=batch_size,
                      torch_threads=2, in_memory=True, dtype="float32")
    return EvalWorker(spec, "bench")


def evaluate(worker, genome, gen: int, idx: int, x=None, model: str | None = None,
             samples=None):
    from llm_evo.evaluation.jobs import Job

    if model is not None:
        return worker.evaluate(Job(gen, idx, model_path=model, kind="parent"))
    return worker.evaluate(Job(gen, idx, merge_config=genome.merge_config_dict(x, "float32"),
                               samples=samples))


def parents(worker, genome) -> list[dict]:
    models = [*genome.models, genome.base_model]
    out = [evaluate(worker, genome, -1, i, model=m) for i, m in enumerate(models)]
    return [r.items for r in out if r.status == "ok"]


def full_search(worker, genome, seed: int, n: int):
    """(generation, items, score) of every candidate of a plain gp search."""
    from llm_evo.strategies import make_strategy

    strategy = make_strategy("gp", genome.space, seed=seed, population_size=POPULATION)
    out, gen = [], 0
    while len(out) < n:
        xs = strategy.ask()
        res = [evaluate(worker, genome, gen, i, x) for i, x in enumerate(xs)]
        strategy.tell(xs, [r.score if r.status == "ok" else None for r in res])
        out += [(gen, r.items, r.score) for r in res if r.status == "ok"]
        gen += 1
    return out[:n]


def from_ledger(path: str) -> tuple[list[dict], list[tuple]]:
    """Parents' items and (generation, items, score) of the fully scored candidates of the
    latest run stored at `path` (an unweighted sum of the task means, as the bench uses)."""
    from llm_evo.storage import RunStorage

    with RunStorage(path) as db:
        run_id = db.latest_run()["id"]
        items = db.items(run_id)
        recs = [c for c in db.candidates(run_id) if c.status == "ok"
                and (c.generation, c.idx) in items]
    parent_items = [items[(c.generation, c.idx)] for c in recs if c.kind == "parent"]
    cands = [(c.generation, items[(c.generation, c.idx)],
              score_of(items[(c.generation, c.idx)])) for c in recs if c.kind == "candidate"]
    return parent_items, cands


def score_of(items: dict) -> float:
    return float(sum(np.mean(v["values"]) for v in items.values()))


def restrict(items: dict, samples: dict) -> dict:
    out = {}
    for key, got in items.items():
        keep = set(samples[key.split("/")[0]])
        pairs = [(i, v) for i, v in zip(got["ids"], got["values"], strict=True) if i in keep]
        out[key] = {"ids": [i for i, _ in pairs], "values": [v for _, v in pairs]}
    return out


def estimation_table(parent_items, cands, anchor_sizes) -> list[list[str]]:
    from scipy.stats import spearmanr

    from llm_evo.screening.estimator import Screener

    full_items = sum(len(v["ids"]) for v in parent_items[0].values())
    truth = [score for _, _, score in cands]
    rows = []
    for method in ("random", "irt"):
        for k in anchor_sizes:
            est, per_cand = [], 0
            for gen, items, _ in cands:
                history = parent_items + [it for g, it, _ in cands if g < gen]
                screener = Screener(parent_items[0], history, k, method, seed=0)
                per_cand = screener.items_per_candidate
                est.append(sum(screener.estimate(
                    restrict(items, screener.anchor_samples())).values()))
            rho = spearmanr(est, truth)[0]
            mae = float(np.mean(np.abs(np.array(est) - truth)))
            rows.append([f"{method} anchors" + (" (mean)" if method == "random" else
                                                " (p-IRT)"),
                         str(k), str(per_cand), f"{full_items / per_cand:.1f}x",
                         f"{rho:.3f}", f"{mae:.3f}"])
    return rows


def screened_search(worker, genome, seed: int, parent_items, budget_items: int,
                    anchors: int, share: float) -> float:
    """Best full-subset score of a screened gp search within `budget_items` items."""
    from llm_evo.screening.estimator import Screener, means, promoted
    from llm_evo.strategies import make_strategy

    strategy = make_strategy("gp", genome.space, seed=seed, population_size=POPULATION)
    history, best, spent, gen = list(parent_items), -math.inf, 0, 0
    while True:
        screener = Screener(parent_items[0], history, anchors, "irt", seed=0)
        xs = strategy.ask()
        cost = len(xs) * screener.items_per_candidate
        n_full = len(promoted([0.0] * len(xs), share))
        rest = sum(len(v) for v in screener.rest_samples().values())
        if spent + cost + n_full * rest > budget_items:
            return best
        first = [evaluate(worker, genome, gen, i, x, samples=screener.anchor_samples())
                 for i, x in enumerate(xs)]
        est = [sum(screener.estimate(r.items).values()) if r.status == "ok" else None
               for r in first]
        told = list(est)
        for i in promoted(est, share):
            r = evaluate(worker, genome, gen, i, xs[i], samples=screener.rest_samples())
            if r.status == "ok":
                full = screener.combine(first[i].items, r.items)
                history.append(full)
                told[i] = sum(means(full).values())
                best = max(best, told[i])
        spent += cost + n_full * rest
        strategy.tell(xs, told)
        gen += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", default="tiny", choices=["tiny", "smol"])
    ap.add_argument("--candidates", type=int, default=64)
    ap.add_argument("--estimation-seed", type=int, default=0,
                    help="seed of the estimation part's search: other seeds, other "
                         "candidates, to see how much one search's Spearman varies")
    ap.add_argument("--limit", type=int, default=80, help="items per task (the full subset)")
    ap.add_argument("--anchors", default="4,8,16", help="anchor items per task")
    ap.add_argument("--search-seeds", type=int, default=5)
    ap.add_argument("--budget", type=int, default=48, help="full search: evaluations")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--save", help="write the estimation part's items to this JSON file")
    ap.add_argument("--load", help="read them from a --save file instead of searching")
    ap.add_argument("--ledger", help="or from a run's storage path (its fully scored "
                                     "parents and candidates, with their items)")
    ap.add_argument("--search-json", help="search part: keep each finished seed here and "
                                          "skip the seeds it already holds (resumable)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    fmt = markdown_table if args.markdown else (
        lambda h, rows: "\n".join(" | ".join(r) for r in [h, *rows]))
    genome, tasks, task_dir = genome_of("tiny-easy" if args.family == "tiny" else "smol")
    batch = args.batch_size or (32 if args.family == "tiny" else 4)
    worker = make_worker(tasks, task_dir, args.limit, batch)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.family} family, {len(tasks)} tasks x {args.limit} items", flush=True)
    t0 = time.perf_counter()
    # read (and checked) before anything is scored; the commit is noted as the run starts
    state = search_state(args, genome) if args.search_seeds > 0 else None
    commit = git_commit() if state is not None else ""
    if args.load:
        saved = json.loads(Path(args.load).read_text())
        parent_items, cands = saved["parents"], [tuple(c) for c in saved["candidates"]]
    elif args.ledger:
        parent_items, cands = from_ledger(args.ledger)
    else:
        parent_items = parents(worker, genome)
        cands = full_search(worker, genome, args.estimation_seed, args.candidates)
    if args.save:
        Path(args.save).write_text(json.dumps({"parents": parent_items, "candidates": cands}))
    per_task = sorted({len(v["ids"]) for v in parent_items[0].values()})
    print(f"items per task in the full subset: {per_task}", flush=True)
    print(f"{len(cands)} candidates fully scored in {time.perf_counter() - t0:.0f} s; scores "
          f"{min(c[2] for c in cands):.3f}..{max(c[2] for c in cands):.3f}", flush=True)
    anchor_sizes = [int(k) for k in args.anchors.split(",")]
    print(fmt(["estimator", "anchors/task", "items/candidate", "fewer items", "Spearman",
               "MAE"], estimation_table(parent_items, cands, anchor_sizes)), flush=True)
    if args.search_seeds > 0:
        search_part(args, worker, genome, len(tasks), parent_items, fmt, state, commit)


def search_part(args, worker, genome, n_tasks: int, parent_items, fmt, state: dict,
                commit: str) -> None:
    """Seeds 0 .. search-seeds-1; with --search-json, each finished seed is written at once
    and seeds already in the file are not run again (a long SmolLM2 run spans sessions)."""
    per_eval = n_tasks * args.limit
    budget = args.budget * per_eval
    done = state["seeds"]
    for seed in range(args.search_seeds):
        if str(seed) in done:
            continue
        run = full_search(worker, genome, seed, args.budget)
        done[str(seed)] = [max(s for _, _, s in run),
                           max(s for _, _, s in run[:args.budget // 4]),
                           screened_search(worker, genome, seed, parent_items, budget // 4,
                                           anchors=8, share=0.25)]
        print(f"seed {seed}: full {done[str(seed)][0]:.3f}, full at 1/4 "
              f"{done[str(seed)][1]:.3f}, screened at 1/4 {done[str(seed)][2]:.3f}", flush=True)
        state["commits"][str(seed)] = commit  # a note (which code scored it), not a check
        if args.search_json:
            Path(args.search_json).write_text(json.dumps(state, indent=1))
    seeds = [str(s) for s in range(args.search_seeds)]
    full_best, quarter_best, screened_best = ([done[s][k] for s in seeds] for k in range(3))
    med = float(np.median(full_best))
    se = math.sqrt(n_tasks * (med / n_tasks) * (1 - med / n_tasks) / args.limit)
    rows = []
    for label, values, items in (("full", full_best, budget),
                                 ("full, 1/4 of the items", quarter_best, budget // 4),
                                 ("screened (IRT, 8 anchors, 1/4 promoted), 1/4 of the items",
                                  screened_best, budget // 4)):
        rows.append([label, str(items), f"{np.median(values):.3f}",
                     f"{(np.median(values) - med) / se:+.1f}"])
    print(f"\nsearch: median best full-subset score over {args.search_seeds} seeds (SE of the "
          f"score {se:.3f}); per seed (full / full at 1/4 / screened at 1/4): "
          + ", ".join("/".join(f"{v:.3f}" for v in done[s]) for s in seeds))
    print(fmt(["search", "items scored", "median best", "vs full, in SE"], rows))


def search_state(args, genome) -> dict:
    """The --search-json file's content for this run: its settings (family build, limit,
    budget), the seeds finished so far and the commit that scored each. A file written for
    other settings stops the run here, before anything is scored."""
    family = json.loads((Path(genome.base_model).parent / "family.json").read_text())
    config = {"family": args.family, "fingerprint": family["fingerprint"][:16],
              "limit": args.limit, "budget": args.budget}
    if not (args.search_json and Path(args.search_json).exists()):
        return {"config": config, "seeds": {}, "commits": {}}
    saved = json.loads(Path(args.search_json).read_text())
    if saved["config"] != config:
        sys.exit(f"--search-json {args.search_json}: written for {saved['config']}, "
                 f"not {config}")
    return saved


def git_commit() -> str:
    import subprocess

    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
