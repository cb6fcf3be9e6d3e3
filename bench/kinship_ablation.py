"""Kinship penalty ablation: lambda = 0 against lambda > 0, same seeds, same evaluation budget.

The landscape is synthetic (fast, no Ray, no lm-eval), but the kinship is the product's: the
genome is task_arithmetic over the real tiny family (ft_arith, ft_category; 4 layer groups x
2 models = 8 weights in [0, 1]) and each candidate's cosine kinship to the reference set
(the elite, top 5 so far, or the CMA mean) comes from `KinshipPenalty` over the family's real
Gram statistics, exactly as in a run.

Fitness of a genotype x (the "raw score"), deceptive by construction:

    f(x) = 0.6 exp(-|x - a|^2 / (2 * 0.30^2))      broad local hill: a = all 0.5, the uniform
                                                   merge the search starts from
         + 1.0 exp(-|x - b|^2 / (2 * w^2))         higher peak: b = 0.5 +- 0.4, ft_arith-heavy
                                                   early layers, ft_category-heavy late ones

w = 0.12 (default, a narrow peak) or --peak-width 0.3 (a second hill as broad as the first).
cs(a, b) = 0.893 on the tiny family. Started at a, CMA-ES converges on the hill, where
every candidate is a near copy of the elite (cs > 0.99); the peak is only found by moving
away. Each configuration runs CMA-ES (population 8, sigma0 0.2) for the same number of
evaluations from the same seeds, tells the strategy the penalised score, and reports the
best raw score reached ("found global": best raw > 0.9).

    python bench/kinship_ablation.py --markdown                     # 10 seeds, 40 generations
    python bench/kinship_ablation.py --peak-width 0.3 --tau 0.93 --lambdas 10 100
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from llm_evo.config import GenomeConfig, KinshipConfig  # noqa: E402
from llm_evo.genome import Genome  # noqa: E402
from llm_evo.kinship.penalty import KinshipPenalty, build_penalty  # noqa: E402
from llm_evo.strategies import make_strategy  # noqa: E402

FOUND = 0.9  # a best raw score above this means the global peak was found


@dataclass(frozen=True)
class Landscape:
    """Two Gaussian hills over the 8 genes: a broad, lower one and a narrow, higher one."""

    local: tuple[float, ...] = (0.5,) * 8  # the uniform merge, where the search starts
    # genes are (group, model): groups 0-1 lean on ft_arith, groups 2-3 on ft_category
    peak: tuple[float, ...] = (0.9, 0.1, 0.9, 0.1, 0.1, 0.9, 0.1, 0.9)
    local_height: float = 0.6
    local_width: float = 0.30
    peak_height: float = 1.0
    peak_width: float = 0.12

    def __call__(self, x: np.ndarray) -> float:
        d_local = np.sum((x - np.asarray(self.local)) ** 2)
        d_peak = np.sum((x - np.asarray(self.peak)) ** 2)
        return float(self.local_height * np.exp(-d_local / (2 * self.local_width**2))
                     + self.peak_height * np.exp(-d_peak / (2 * self.peak_width**2)))


def family_genome(family: Path) -> Genome:
    models = [str(family / "ft_arith"), str(family / "ft_category")]
    cfg = GenomeConfig(models=models, merge_method="task_arithmetic",
                       base_model=str(family / "base"), layer_granularity=2, normalize=False)
    return Genome(cfg, models, str(family / "base"), 8)


def run(fitness: Landscape, penalty: KinshipPenalty, genome: Genome, seed: int,
        generations: int, population: int) -> dict:
    """One CMA-ES search on the landscape; the strategy is told the penalised scores."""
    strategy = make_strategy("cma", genome.space, seed=seed, population_size=population,
                             sigma0=0.2)
    archive: list[tuple[float, np.ndarray]] = []
    kin_seconds = 0.0
    restarts = 0
    for _ in range(generations):
        xs = strategy.ask()
        against = penalty.config.against
        t0 = time.perf_counter()
        if against == "elite":
            top = sorted(archive, key=lambda e: -e[0])[: penalty.config.elite_size]
            assessed = penalty.assess(xs, [g for _, g in top])
        elif against == "mean":
            assessed = penalty.assess(xs, [strategy.search_mean()])
        else:
            assessed = penalty.assess(xs, population=True)
        kin_seconds += time.perf_counter() - t0
        raw = [fitness(x) for x in xs]
        told = [penalty.penalised(r, k) for r, k in zip(raw, assessed.kinship, strict=True)]
        strategy.tell(xs, told)
        archive += [(r, x) for r, x in zip(raw, xs, strict=True)]
        if penalty.stagnant(assessed.diversity):
            strategy.on_stagnation("kinship stagnation")
            restarts += 1
    best = max(r for r, _ in archive)
    return {"best": best, "evaluations": len(archive), "kin_s": kin_seconds,
            "restarts": restarts}


def _sd(values: list[float]) -> str:
    """Sample standard deviation, or "n/a" for one seed (statistics.stdev needs two)."""
    return f"{statistics.stdev(values):.3f}" if len(values) > 1 else "n/a"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", type=Path, default=REPO / "models" / "tiny")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--generations", type=int, default=40)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--peak-width", type=float, default=Landscape.peak_width)
    ap.add_argument("--peak-offset", type=float, default=0.4,
                    help="|peak - 0.5| per gene (0.4: the peak at 0.9 / 0.1)")
    ap.add_argument("--local-width", type=float, default=Landscape.local_width)
    ap.add_argument("--only-baseline", action="store_true")
    ap.add_argument("--tau", type=float, default=0.97)
    ap.add_argument("--against", nargs="*", default=["elite", "mean"],
                    choices=["elite", "population", "mean"])
    ap.add_argument("--lambdas", type=float, nargs="*", default=[10.0, 100.0])
    ap.add_argument("--stagnation", type=float, default=0.99,
                    help="population mean kinship that counts as stagnant (3 generations)")
    ap.add_argument("--stagnation-lambdas", type=float, nargs="*", default=[0.0],
                    help="penalties to run with the stagnation monitor (CMA restarts) on")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    signs = np.array([1, -1, 1, -1, -1, 1, -1, 1])
    fitness = Landscape(peak=tuple(0.5 + args.peak_offset * signs), peak_width=args.peak_width,
                        local_width=args.local_width)
    if not (args.family / "base").is_dir():
        ap.error(f"{args.family}: no tiny family there (scripts/make_tiny_family.py builds it)")
    genome = family_genome(args.family)
    configs = [KinshipConfig(penalty=0.0, enabled=True)]
    configs += [KinshipConfig(penalty=lam, threshold=args.tau, against=against)
                for against in args.against for lam in args.lambdas]
    configs += [KinshipConfig(penalty=lam, threshold=args.tau, stagnation=args.stagnation,
                              stagnation_generations=3) for lam in args.stagnation_lambdas]
    with tempfile.TemporaryDirectory() as cache:
        base_penalty, facts = build_penalty(configs[0], genome, cache)
    print(f"kinship statistics: {facts['tensors']} tensors, {facts['blocks']} blocks, "
          f"{facts['bytes_read'] / 1e6:.1f} MB read in {facts['pass_seconds']:.2f}s "
          f"(files: {facts['file_bytes'] / 1e6:.1f} MB)")
    budget = args.generations * args.population
    f = fitness
    kin = base_penalty.model.matrix("cs", [np.asarray(f.local), np.asarray(f.peak)])[0, 1]
    print(f"landscape: local hill {f.local_height} (width {f.local_width}) at the uniform "
          f"merge, peak {f.peak_height} (width {f.peak_width}); cs(hill, peak) = {kin:.4f}; "
          f"{args.seeds} seeds x {budget} evaluations each")
    rows = []
    for cfg in configs[:1] if args.only_baseline else configs:
        penalty = KinshipPenalty(cfg, base_penalty.model)
        results = [run(fitness, penalty, genome, seed, args.generations, args.population)
                   for seed in range(args.seeds)]
        best = [r["best"] for r in results]
        per_candidate = sum(r["kin_s"] for r in results) / sum(r["evaluations"]
                                                               for r in results)
        label = f"lambda={cfg.penalty:g}" + (
            f", tau={cfg.threshold:g}, {cfg.against}" if cfg.penalty else "")
        if cfg.stagnation is not None:
            label += f", stagnation {cfg.stagnation:g}/{cfg.stagnation_generations}"
        rows.append([label, str(args.seeds), str(budget),
                     f"{statistics.mean(best):.3f} ± {_sd(best)}",
                     f"{statistics.median(best):.3f}", f"{min(best):.3f}", f"{max(best):.3f}",
                     f"{sum(b > FOUND for b in best)}/{args.seeds}",
                     f"{sum(r['restarts'] for r in results)}",
                     f"{per_candidate * 1e6:.0f}"])
    header = ["config", "seeds", "evals/seed", "best raw (mean ± sd)", "median", "min", "max",
              "found global", "restarts", "kinship µs/cand"]
    if args.markdown:
        print(markdown_table(header, rows))
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
