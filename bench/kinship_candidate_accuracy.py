"""Candidate kinship without merging vs. the kinship engine on real merges, per merge method.

For each method, random genotypes of the tiny family (base + ft_arith, ft_category and a third
model mixing their deltas per tensor; slerp: the two fine-tunes) are merged with mergekit
(float32), the kinship engine measures every pair of merged checkpoints, and the prediction
from the Gram statistics (linear, task_arithmetic, slerp) or the coordinate sketch (ties,
dare_ties) is compared. dare_ties drops at random, so its merges are repeated with several
torch seeds: the spread between real merges of the same genotypes is the floor no estimate
can beat.

    python bench/kinship_candidate_accuracy.py --markdown
    python bench/kinship_candidate_accuracy.py --methods dare_ties --seeds 8 --density-min 0
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_pool_seeds import mixed_delta_model  # noqa: E402 - scripts/

from llm_evo.config import GenomeConfig  # noqa: E402
from llm_evo.genome import Genome  # noqa: E402
from llm_evo.kinship import kinship_matrix  # noqa: E402
from llm_evo.kinship.candidate import build_delta_stats, candidate_kinship  # noqa: E402
from llm_evo.kinship.layout import tensor_slots  # noqa: E402

METHODS = ("linear", "task_arithmetic", "slerp", "ties", "dare_ties")


def merge(genome: Genome, genotypes: list, out: Path, seed: int) -> list[str]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    torch.manual_seed(seed)
    paths = []
    for i, x in enumerate(genotypes):
        path = out / f"s{seed}_m{i}"
        config = MergeConfiguration.model_validate(genome.merge_config_dict(x, "float32"))
        run_merge(config, out_path=str(path), options=MergeOptions(
            quiet=True, copy_tokenizer=False, write_model_card=False, lazy_unpickle=True))
        paths.append(str(path))
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", type=Path, default=REPO / "models" / "tiny")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS)
    ap.add_argument("--genotypes", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3, help="torch seeds for dare_ties merges")
    ap.add_argument("--sketch", type=int, nargs="*", default=[32768, 65536])
    ap.add_argument("--density-min", type=float, default=0.1,
                    help="dare_ties densities are drawn in [density-min, 1]")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # OpenMP spinning makes merges 10x slower on a busy machine
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = str(args.family / "base")
        three = [str(args.family / "ft_arith"), str(args.family / "ft_category"),
                 str(mixed_delta_model(args.family, tmp / "ft_mix"))]
        for method in args.methods:
            models = three[:2] if method == "slerp" else three
            cfg = GenomeConfig(models=models, merge_method=method, base_model=base,
                               layer_granularity=4, filters=["self_attn", "mlp"])
            genome = Genome(cfg, models, base, 8)
            rng = np.random.default_rng(0)
            genotypes = [rng.uniform(genome.space.lower, genome.space.upper)
                         for _ in range(args.genotypes)]
            if method == "dare_ties":
                dens = [a.index for a in genome.space.axes if a.param == "density"]
                for g in genotypes:
                    g[dens] = args.density_min + (1 - args.density_min) * g[dens]
            seeds = range(args.seeds if method == "dare_ties" else 1)
            real = [kinship_matrix(merge(genome, genotypes, tmp, s), base) for s in seeds]
            pairs = np.triu_indices(args.genotypes, 1)
            spread = (np.stack([r.metric("cs")[pairs] for r in real]).std(axis=0).max()
                      if len(real) > 1 else 0.0)
            sketched = method in ("ties", "dare_ties")
            slots = tensor_slots(genome)
            for sketch in (args.sketch if sketched else [0]):
                stats = build_delta_stats(models, base, slots, sketch_size=sketch,
                                          sketch_ranks=method == "ties")
                model = candidate_kinship(genome, slots, stats)
                t0 = time.perf_counter()
                pred = {m: model.matrix(m, genotypes)[pairs] for m in ("cs", "pcc", "ed")}
                per = (time.perf_counter() - t0) / args.genotypes
                cs = [np.abs(pred["cs"] - r.metric("cs")[pairs]).max() for r in real]
                pcc = [np.abs(pred["pcc"] - r.metric("pcc")[pairs]).max() for r in real]
                ed = [(np.abs(pred["ed"] - r.metric("ed")[pairs]) / r.metric("ed")[pairs]).max()
                      for r in real]
                # dare drops at random: what the estimate targets is the expected kinship,
                # approximated by the mean over the real merges' seeds.
                mean_cs = np.stack([r.metric("cs")[pairs] for r in real]).mean(axis=0)
                vs_mean = np.abs(pred["cs"] - mean_cs).max()
                rows.append([method, f"{sketch}" if sketch else "exact",
                             f"{args.genotypes} ({len(pairs[0])} pairs)", f"{len(real)}",
                             f"{max(cs):.2e}", f"{max(pcc):.2e}", f"{max(ed):.2e}",
                             ", ".join(f"{e:.3f}" for e in cs) if len(real) > 1 else "-",
                             f"{spread:.4f}" if len(real) > 1 else "-",
                             f"{vs_mean:.2e}" if len(real) > 1 else "-", f"{per * 1e3:.2f}"])
                print("  ".join(rows[-1]), file=sys.stderr)
    header = ["method", "sketch", "genotypes", "merges per genotype", "max abs Δcs",
              "max abs Δpcc", "max rel Δed", "max abs Δcs per merge seed",
              "real cs spread (max sd)", "max abs Δcs vs seeds' mean", "ms / candidate"]
    if args.markdown:
        print(markdown_table(header, rows))
    else:
        for r in [header, *rows]:
            print("  ".join(r))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
