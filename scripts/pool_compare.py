#!/usr/bin/env python
"""Exploration on vs off for `llm-evo pool`, at the same evaluation budget (docs/pool.md).

For each starting pool (a subset of the tiny family's fine-tunes and earlier merges, see
scripts/make_pool_seeds.py) and each lm-eval subset seed, runs `llm-evo pool` twice with the
same `--max-evaluations`, once with `--exploration` and once with `--no-exploration`, then
prints a Markdown table read from the lineage ledgers: best score, evaluations used, rounds,
why it stopped, and each run's best after the number of evaluations the other one used.

Usage: ``python scripts/pool_compare.py [--out runs/pool_compare] [--budget 30] [--limit 60]
[--seeds 1,2] [--pools A,B,C] [--top-k 3]``
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
FT = ["models/tiny/ft_arith", "models/tiny/ft_category"]
SEEDS = "models/tiny_pool"
POOLS = {
    "A": [*FT, f"{SEEDS}/ta_arith_1.0_cat_0.4", f"{SEEDS}/ta_arith_0.4_cat_1.0"],
    "B": [*FT, f"{SEEDS}/ta_arith_0.7_cat_0.7", f"{SEEDS}/linear_arith_0.3_cat_0.7"],
    "C": [*FT, f"{SEEDS}/ta_arith_1.0_cat_0.4", f"{SEEDS}/linear_arith_0.3_cat_0.7"],
    "D": [*FT, f"{SEEDS}/ta_arith_1.0_cat_0.4", f"{SEEDS}/ta_arith_0.4_cat_1.0",
          f"{SEEDS}/ta_arith_0.7_cat_0.7", f"{SEEDS}/linear_arith_0.3_cat_0.7"],
}


def best_after(db: Path, n: int) -> float | None:
    con = sqlite3.connect(db)
    row = con.execute("SELECT MAX(score) FROM pool_models WHERE status='ok' AND "
                      "eval_order <= ?", (n,)).fetchone()
    con.close()
    return row[0]


def kinship_stop(db: Path, threshold: float) -> tuple[int, int, float] | None:
    """(round, evaluations, best score) where `pool.kinship_stop: threshold` would have
    stopped this run: the stop is checked after each round, and the run is deterministic."""
    con = sqlite3.connect(db)
    row = con.execute("SELECT round, evaluations, best_score FROM pool_rounds WHERE "
                      "top_k_kinship >= ? ORDER BY round LIMIT 1", (threshold,)).fetchone()
    con.close()
    return row


def summary(db: Path) -> dict:
    con = sqlite3.connect(db)
    run = con.execute("SELECT stop_reason FROM pool_runs ORDER BY id DESC").fetchone()
    last = con.execute("SELECT round, evaluations, best, best_score FROM pool_rounds "
                       "ORDER BY round DESC").fetchone()
    results = con.execute("SELECT results_json FROM pool_models WHERE name = ?",
                          (last[2],)).fetchone()[0]
    n_explore = con.execute("SELECT COUNT(*) FROM pool_models WHERE exploration = 1"
                            ).fetchone()[0]
    con.close()
    return {"stop": run[0], "rounds": last[0], "evaluations": last[1], "best": last[2],
            "score": last[3], "results": json.loads(results), "explore_merges": n_explore}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pool_compare")
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--seeds", default="42", help="lm-eval subset seeds, comma-separated")
    parser.add_argument("--pools", default="A,B,C")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()
    out = Path(args.out)
    base = yaml.safe_load((REPO / "configs" / "pool" / "tiny.yml").read_text())
    rows = []
    for pool in args.pools.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            cfg = {**base, "pool": {**base["pool"], "models": POOLS[pool], "seed": seed,
                                    "top_k": args.top_k},
                   "shuffle": True, "limit": args.limit}
            folder = out / f"{pool}_seed{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            config = folder / "config.yml"
            config.write_text(yaml.safe_dump(cfg))
            found = {}
            for mode in ("exploration", "no-exploration"):
                storage = folder / mode
                if not (storage / "llm_evo_pool.sqlite").is_file():
                    proc = subprocess.run(
                        [str(Path(sys.executable).parent / "llm-evo"), "pool", str(config),
                         "--storage-path", str(storage), f"--{mode}", "--quiet",
                         "--max-evaluations", str(args.budget), "--num-workers", "2"],
                        cwd=REPO, capture_output=True, text=True)
                    print(proc.stderr[-1500:], proc.stdout, file=sys.stderr)
                    if proc.returncode != 0:
                        raise SystemExit(f"{pool} {mode} failed")
                found[mode] = summary(storage / "llm_evo_pool.sqlite")
            on, off = found["exploration"], found["no-exploration"]
            common = min(on["evaluations"], off["evaluations"])
            at_on = best_after(folder / "exploration" / "llm_evo_pool.sqlite", common)
            at_off = best_after(folder / "no-exploration" / "llm_evo_pool.sqlite", common)
            rows.append((pool, seed, on, off, common, at_on, at_off))
    print("| pool | seed | exploration | best score | evaluations | rounds | stopped | "
          "exploration merges | best at common budget | kinship_stop 0.99 would stop at |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for pool, seed, on, off, common, at_on, at_off in rows:
        for label, r, at in (("on", on, at_on), ("off", off, at_off)):
            mode = "exploration" if label == "on" else "no-exploration"
            stop = kinship_stop(out / f"{pool}_seed{seed}" / mode / "llm_evo_pool.sqlite", 0.99)
            stop_text = (f"round {stop[0]}, {stop[1]} ev, best {stop[2]:.4f}" if stop
                         else "never")
            print(f"| {pool} | {seed} | {label} | {r['score']:.4f} ({r['best']}) | "
                  f"{r['evaluations']} | {r['rounds']} | {r['stop']} | {r['explore_merges']} | "
                  f"{at:.4f} @ {common} | {stop_text} |")


if __name__ == "__main__":
    main()
