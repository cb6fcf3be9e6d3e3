"""Where an in-memory worker's memory goes, phase by phase, on the SmolLM2-135M family.

One EvalWorker (no Ray, so the figures are the worker's own) merges and scores a few
random candidates of configs/smol.yml in memory. Before each phase the kernel's peak-RSS
counter is reset (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0), so each row's peak is
exact, not sampled: start-up (imports, lm-eval tasks), every merge (the first one also
reads the inputs) and every evaluation. The bound is issue #15's: (input models + 1) x the
model's fp32 size + 1 GiB.

Run from the repo root after `make smol-family`:
``python bench/worker_memory.py [--batch-sizes 2,8,32] [--candidates 3] [--markdown]``
Each batch size runs in its own process (a fresh worker), about 1 min each on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
GIB = 1024**3
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process, in GiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024 / GIB
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def one_worker(batch_size: int, candidates: int) -> list[dict]:
    """Runs in a child process: the phases of one fresh worker."""
    sys.path.insert(0, str(REPO))
    import numpy as np
    import yaml

    rows: list[dict] = []

    def phase(name: str, fn):
        reset_peak()
        t0 = time.perf_counter()
        value = fn()
        s = status()
        rows.append({"phase": name, "peak": s["VmHWM"], "rss": s["VmRSS"],
                     "anon": s["RssAnon"], "file": s["RssFile"],
                     "s": time.perf_counter() - t0})
        return value

    def start():
        from llm_evo.config import GenomeConfig
        from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec
        from llm_evo.evaluation.worker import EvalWorker
        from llm_evo.genome import Genome

        cfg = yaml.safe_load((REPO / "configs/smol.yml").read_text())
        g = cfg["genome"]
        models = [str(REPO / m) for m in g["models"]]
        base = str(REPO / g["base_model"])
        genome = Genome(GenomeConfig(**{**g, "models": models, "base_model": base}),
                        models, base, 30)
        spec = WorkerSpec(
            tasks=tuple(TaskSpec(t["name"], 1.0, "acc,none") for t in cfg["tasks"]),
            task_search_paths=(str(REPO / "models/smol/tasks"),),
            merge_dir="/tmp/llm-evo-worker-memory", limit=cfg["limit"],
            batch_size=batch_size, torch_threads=2, in_memory=True, dtype="float32")
        return genome, EvalWorker(spec, "bench")

    genome, worker = phase("start-up", start)
    from llm_evo.evaluation.jobs import Job

    rng = np.random.default_rng(0)
    backend = worker.backend
    for i in range(candidates):
        x = rng.uniform(genome.space.lower, genome.space.upper)
        job = Job(0, i, merge_config=genome.merge_config_dict(x, dtype="float32"))
        staged = phase(f"merge {i}" + (" (+ inputs, resident)" if i == 0 else ""),
                       lambda job=job: backend.activate(job, None)[0])
        phase(f"evaluate {i}", backend.score)
        backend.release(staged)
    return rows


def model_gib() -> tuple[float, float, int]:
    """fp32 size of one model (tied embedding once), the largest tensor, input count."""
    from safetensors import safe_open

    cfg = yaml.safe_load((REPO / "configs/smol.yml").read_text())["genome"]
    total = largest = 0
    with safe_open(str(REPO / cfg["base_model"] / "model.safetensors"), "np") as fh:
        for name in fh.keys():
            n = 4 * math.prod(fh.get_slice(name).get_shape())
            total += n
            largest = max(largest, n)
    return total / GIB, largest / GIB, len(cfg["models"]) + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", default="2,8,32")
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one_worker(args.child, args.candidates)))
        return
    size, largest, inputs = model_gib()
    bound = (inputs + 1) * size + 1.0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"model {size:.3f} GiB fp32, largest tensor {largest:.3f} GiB, {inputs} inputs; "
          f"bound ({inputs} + 1) x {size:.3f} + 1 = {bound:.2f} GiB")
    table = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        out = subprocess.run([sys.executable, __file__, "--child", str(bs),
                              "--candidates", str(args.candidates)],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(f"batch {bs}: worker failed:\n{out.stderr[-2000:]}")
        for row in json.loads(out.stdout.strip().splitlines()[-1]):
            table.append([str(bs), row["phase"], f"{row['s']:.1f}", f"{row['peak']:.2f}",
                          f"{row['peak'] - row['rss']:+.2f}", f"{row['rss']:.2f}",
                          f"{row['file']:.2f}", f"{row['anon']:.2f}",
                          "yes" if row["peak"] <= bound else "no"])
    header = ["batch", "phase", "s", "peak GiB", "transient", "RSS after", "file-backed",
              "anonymous", "within bound"]
    if args.markdown:
        print(markdown_table(header, table))
    else:
        widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
        for r in [header, *table]:
            print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()
