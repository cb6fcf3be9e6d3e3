"""Benchmark candidate evaluation on the tiny family: on disk, in memory, and by hand.

Scores the same N seeded task-arithmetic genotypes of the tiny Llama family (8 layers,
hidden 128; `tiny_skill_arith` + `tiny_skill_category`) three ways, and breaks each
candidate's wall time down into merge, load, evaluate and the rest:

1. on disk: the default worker (mergekit `run_merge` to a temp folder, HFLM loads it);
   also, for reference, the same loop as it was before issue #6 and as mergekit-evolve's
   on-disk actor runs it: a `simple_evaluate` call per candidate;
2. in memory: `--in-memory` (merged tensors copied into one resident model);
3. by hand: what a user would script, `mergekit-yaml` then the `lm_eval` CLI per candidate.

Paths 1 and 2 run through the real Ray workers (`pool` and `buffered` scheduling, 1 and 2
workers). Worker start-up and the parents' evaluation (which a run does first, and which
loads the resident model) are timed apart and not counted per candidate. All paths must
give the same scores; the script checks it. Run from the repo root:

    python bench/eval_throughput.py [--candidates 16]   # models/tiny or $LLM_EVO_TINY_FAMILY
        [--limit 100] [--repeat 3] [--threads 1] [--skip-hand] [--markdown] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FAMILY = ("ft_arith", "ft_category")
TASKS = ("tiny_skill_arith", "tiny_skill_category")


@dataclass
class Row:
    path: str
    strategy: str
    workers: int
    n: int
    wall: float  # the batch of N candidates, end to end
    merge: float  # per candidate, mean time a worker was blocked on the merge
    load: float | None
    evaluate: float
    startup: float
    scores: dict[int, float] = field(default_factory=dict)
    merge_compute: float | None = None  # per candidate, incl. merges run in the background

    @property
    def per_candidate(self) -> float:
        return self.wall / self.n

    @property
    def worker_time(self) -> float:
        """Worker-seconds per candidate (all workers busy for the whole batch)."""
        return self.wall * self.workers / self.n

    @property
    def other(self) -> float:
        return self.worker_time - self.merge - (self.load or 0.0) - self.evaluate

    @property
    def non_eval_share(self) -> float:
        return 1.0 - self.evaluate / self.worker_time


def family_root() -> Path:
    root = os.environ.get("LLM_EVO_TINY_FAMILY")
    path = Path(root) if root else REPO / "models" / "tiny"
    if not (path / "family.json").is_file():
        sys.exit(f"no tiny family at {path} (set LLM_EVO_TINY_FAMILY or build models/tiny)")
    return path


def make_genome(root: Path):
    from llm_evo.config import GenomeConfig
    from llm_evo.genome import Genome

    models = [str(root / m) for m in FAMILY]
    cfg = GenomeConfig(models=models, merge_method="task_arithmetic",
                       base_model=str(root / "base"), layer_granularity=4, normalize=False)
    return Genome(cfg, models, str(root / "base"), 8)


def genotypes(genome, n: int, seed: int = 0) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.uniform(genome.space.lower, genome.space.upper) for _ in range(n)]


def run_workers(spec, genome, xs, root: Path, strategy: str, workers: int, label: str) -> Row:
    from llm_evo.evaluation.jobs import Job
    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    t0 = time.perf_counter()
    worker_set = WorkerSet(spec, WorkerOptions(num_workers=workers, strategy=strategy))
    worker_set.start()
    try:
        # the parents first, as a run does: this also loads each worker's resident model
        parents = [Job(-1, i, model_path=str(root / m), kind="parent")
                   for i, m in enumerate((*FAMILY, "base"))]
        for _ in range(max(1, workers)):
            worker_set.run(parents, lambda r: None)
        startup = time.perf_counter() - t0
        jobs = [Job(0, i, merge_config=genome.merge_config_dict(x, "float32"))
                for i, x in enumerate(xs)]
        results = {}
        t1 = time.perf_counter()
        worker_set.run(jobs, lambda r: results.__setitem__(r.idx, r))
        wall = time.perf_counter() - t1
    finally:
        worker_set.shutdown()
    bad = [r.error for r in results.values() if r.status != "ok"]
    if bad:
        raise RuntimeError(f"{label}: {len(bad)} failed candidates, e.g. {bad[0]}")
    rs = list(results.values())
    n = len(rs)
    return Row(label, strategy, workers, n, wall,
               merge=sum(r.t_merge_wait or 0.0 for r in rs) / n,
               load=sum(r.t_load or 0.0 for r in rs) / n,
               evaluate=sum(r.t_eval for r in rs) / n,
               startup=startup, scores={i: r.score for i, r in results.items()},
               merge_compute=sum(r.t_merge or 0.0 for r in rs) / n)


def run_with_retry(spec, genome, xs, root: Path, strategy: str, workers: int, label: str,
                   cpus: int, attempts: int = 3) -> Row:
    """On a shared machine someone's `ray stop` may kill our local cluster: start it again."""
    import ray

    for attempt in range(attempts):
        try:
            return run_workers(spec, genome, xs, root, strategy, workers, label)
        except Exception as exc:  # noqa: BLE001 - retried, then re-raised
            if attempt == attempts - 1:
                raise
            print(f"retrying {label}/{strategy}/{workers}w after: {str(exc)[:200]}",
                  file=sys.stderr, flush=True)
            ray.shutdown()
            ray.init(num_cpus=max(cpus, 2), include_dashboard=False, log_to_driver=False)
    raise AssertionError("unreachable")


def run_simple_evaluate(genome, xs, root: Path, limit: int, batch_size: int) -> Row:
    """The on-disk loop before issue #6 (and mergekit-evolve's on-disk actor): run_merge,
    then a fresh HFLM and `lm_eval.simple_evaluate` per candidate, in this process."""
    import gc

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    t0 = time.perf_counter()
    tm = TaskManager(include_path=str(root / "tasks"))
    startup = time.perf_counter() - t0
    options = MergeOptions(copy_tokenizer=True, lazy_unpickle=True, write_model_card=False,
                           quiet=True)
    work = Path(tempfile.mkdtemp(prefix="simple_eval_"))
    merge_t, load_t, eval_t, scores = [], [], [], {}
    t0 = time.perf_counter()
    try:
        for i, x in enumerate(xs):
            out = work / f"c{i}"
            t = time.perf_counter()
            run_merge(MergeConfiguration.model_validate(genome.merge_config_dict(x, "float32")),
                      out_path=str(out), options=options)
            merge_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            lm = HFLM(pretrained=str(out), device="cpu", dtype="float32", batch_size=batch_size)
            load_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            res = lm_eval.simple_evaluate(model=lm, tasks=list(TASKS), task_manager=tm,
                                          limit=limit, log_samples=False, bootstrap_iters=0)
            eval_t.append(time.perf_counter() - t)
            scores[i] = sum(res["results"][t]["acc,none"] for t in TASKS)
            del lm, res
            shutil.rmtree(out)
            gc.collect()
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(xs)
    return Row("on disk, before #6: simple_evaluate per candidate", "-", 1, n, wall,
               merge=sum(merge_t) / n, load=sum(load_t) / n, evaluate=sum(eval_t) / n,
               startup=startup, scores=scores)


def run_by_hand(genome, xs, root: Path, limit: int, batch_size: int, threads: int) -> Row:
    """`mergekit-yaml` then `lm_eval` per candidate, as subprocesses (with the same number
    of torch threads as one worker of the other paths)."""
    bindir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="hand_loop_"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    merge_t, eval_t, scores = [], [], {}
    t0 = time.perf_counter()
    try:
        for i, x in enumerate(xs):
            cfg = work / f"c{i}.yml"
            cfg.write_text(genome.to_yaml(x, "float32"))
            out = work / f"c{i}"
            t = time.perf_counter()
            subprocess.run([str(bindir / "mergekit-yaml"), str(cfg), str(out),
                            "--lazy-unpickle", "--copy-tokenizer", "--quiet"],
                           check=True, env=env, capture_output=True, stdin=subprocess.DEVNULL)
            merge_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([str(bindir / "lm_eval"), "run", "--model", "hf", "--model_args",
                            f"pretrained={out},dtype=float32", "--device", "cpu",
                            "--tasks", ",".join(TASKS), "--include_path", str(root / "tasks"),
                            "--limit", str(limit), "--batch_size", str(batch_size),
                            "--output_path", str(work / f"r{i}")],
                           check=True, env=env, capture_output=True, stdin=subprocess.DEVNULL)
            eval_t.append(time.perf_counter() - t)
            found = sorted((work / f"r{i}").rglob("results_*.json"))
            res = json.loads(found[-1].read_text())["results"]
            scores[i] = sum(res[t]["acc,none"] for t in TASKS)
            shutil.rmtree(out)
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(xs)
    return Row("by hand: mergekit-yaml + lm_eval CLI", "-", 1, n, wall,
               merge=sum(merge_t) / n, load=None, evaluate=sum(eval_t) / n, startup=0.0,
               scores=scores)


def table(rows: list[Row], markdown: bool) -> str:
    head = ["path", "sched", "workers", "N", "s/cand (wall)", "merge", "load", "evaluate",
            "other", "non-eval share", "startup s"]
    lines = []
    for r in rows:
        lines.append([r.path, r.strategy, str(r.workers), str(r.n), f"{r.per_candidate:.3f}",
                      f"{r.merge:.3f}", "-" if r.load is None else f"{r.load:.3f}",
                      f"{r.evaluate:.3f}", f"{r.other:.3f}", f"{100 * r.non_eval_share:.0f}%",
                      f"{r.startup:.1f}"])
    if markdown:
        return markdown_table(head, lines)
    widths = [max(len(c) for c in col) for col in zip(head, *lines, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*cells) for cells in lines)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--limit", type=int, default=100, help="examples per task")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved repeats of the Ray paths; the best of each is shown")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per worker (and for the hand loop's subprocesses); "
                         "on a shared machine more than 1 can make every op wait on a "
                         "descheduled thread")
    ap.add_argument("--skip-hand", action="store_true", help="skip the slow hand-written loop")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    import ray
    import torch

    from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec

    root = family_root()
    genome = make_genome(root)
    xs = genotypes(genome, args.candidates)
    merge_dir = Path(tempfile.mkdtemp(prefix="bench_merges_"))
    spec = WorkerSpec(tasks=tuple(TaskSpec(t, 1.0, "acc,none") for t in TASKS),
                      task_search_paths=(str(root / "tasks"),), merge_dir=str(merge_dir),
                      limit=args.limit, batch_size=args.batch_size, device="auto",
                      torch_threads=args.threads)
    cpus = os.cpu_count() or 1
    ray.init(num_cpus=max(cpus, 2), include_dashboard=False, log_to_driver=False)
    mem = replace(spec, in_memory=True)
    configs = [(spec, "pool", 1, "on disk"), (mem, "pool", 1, "in memory"),
               (mem, "buffered", 1, "in memory"), (spec, "pool", 2, "on disk"),
               (mem, "pool", 2, "in memory"), (mem, "buffered", 2, "in memory")]
    best: dict[tuple, Row] = {}
    walls: dict[tuple, list[float]] = {}
    try:
        # Interleaved repeats, best of each: the machine may be shared, and the load that
        # other jobs put on it changes over minutes; the best run is the least disturbed.
        for rep in range(args.repeat):
            for cfg_spec, strategy, workers, label in configs:
                row = run_with_retry(cfg_spec, genome, xs, root, strategy, workers, label, cpus)
                print(f"[{rep + 1}/{args.repeat}] {label}, {strategy}, {workers}w: "
                      f"{row.per_candidate:.3f} s/cand", file=sys.stderr, flush=True)
                key = (label, strategy, workers)
                walls.setdefault(key, []).append(row.per_candidate)
                if key not in best or row.wall < best[key].wall:
                    best[key] = row
        rows = list(best.values())
        torch.set_num_threads(args.threads)
        rows.append(run_simple_evaluate(genome, xs, root, args.limit, args.batch_size))
        if not args.skip_hand:  # 20x slower than the rest: once is enough to place it
            rows.append(run_by_hand(genome, xs, root, args.limit, args.batch_size,
                                    args.threads))
    finally:
        ray.shutdown()
        shutil.rmtree(merge_dir, ignore_errors=True)

    ref = rows[0].scores
    spread = max(abs(r.scores[i] - ref[i]) for r in rows for i in ref)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tiny family {root}: {args.candidates} candidates, limit {args.limit} per task "
          f"({len(TASKS)} tasks), batch size {args.batch_size}, {args.threads} torch "
          f"thread(s) per worker, best of {args.repeat}")
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs, "
          f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}, "
          f"load average now {load:.1f}")
    print(table(rows, args.markdown))
    print(f"largest score difference between paths: {spread:.2e}")
    for key, values in walls.items():
        print(f"  {key[0]}, {key[1]}, {key[2]}w: s/cand over {len(values)} runs: "
              + ", ".join(f"{v:.3f}" for v in values))
    by = {(r.path, r.strategy, r.workers): r for r in rows}
    disk, mem = by[("on disk", "pool", 1)], by[("in memory", "pool", 1)]
    print(f"in memory vs on disk (1 worker, pool): {disk.per_candidate / mem.per_candidate:.1f}x")
    hand = next((r for r in rows if r.path.startswith("by hand")), None)
    if hand:
        print(f"in memory vs by hand: {hand.per_candidate / mem.per_candidate:.1f}x")
    old = next(r for r in rows if r.path.startswith("on disk, before"))
    print(f"in memory vs on disk before #6: {old.per_candidate / mem.per_candidate:.1f}x")
    for key in (("in memory", "pool", 2), ("in memory", "buffered", 1)):
        print(f"{key[0]} {key[1]} {key[2]}w vs 1w pool: "
              f"{mem.per_candidate / by[key].per_candidate:.2f}x throughput")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([{
            **{k: v for k, v in r.__dict__.items() if k != "scores"},
            "per_candidate": r.per_candidate, "other": r.other,
            "non_eval_share": r.non_eval_share} for r in rows], indent=2))


if __name__ == "__main__":
    main()
