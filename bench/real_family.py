"""Benchmark the whole product on a real pretrained model: the SmolLM2-135M family.

1. the parents' scores (the builder's table over 200 held-out items per skill);
2. one search per strategy on configs/smol.yml, in memory (cma, random, and llm with the
   local SmolLM2 llama.cpp server as the strategy), each within --evals evaluations
   (parents included); the best merge's mean over the skills against every parent's, with
   the binomial standard error of that mean;
3. per-candidate cost: in memory (from the cma search's ledger), on disk (a short random
   search), and by hand (`mergekit-yaml` + the `lm_eval` CLI), split into merge, evaluate
   and the rest, with the peak RSS of the in-memory worker process (the kernel's VmHWM),
   against (input models + 1) x the model's fp32 size + 1 GB;
4. kinship of the real fine-tunes (`llm-evo kinship-matrix`).

Run from the repo root: ``python bench/real_family.py [--evals 60] [--other-evals 16]
[--strategies cma,random,llm] [--disk 6] [--hand 2] [--markdown] [--json F]``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import yaml
from _table import markdown_table  # bench/, the script's own folder

REPO = Path(__file__).resolve().parent.parent
SMOL_BATCH = yaml.safe_load((REPO / "configs/smol.yml").read_text())["evaluation"]["batch_size"]
BIN = Path(sys.executable).parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def build_family() -> dict:
    spec = importlib.util.spec_from_file_location("_smol", REPO / "scripts/make_smol_family.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    family = module.build_family(REPO / "models" / "smol")
    print(module.format_table(family))
    print(f"build timings: {family['timings']}")
    return family


def _proc_status(pid: int) -> dict[str, int]:
    """VmHWM (the kernel's exact peak RSS since the process started) and RssAnon, bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "RssAnon"):
                out[key] = int(value.split()[0]) * 1024
    return out


class RssSampler:
    """Peak RSS of the Ray worker processes under a running `llm-evo run`: the kernel's own
    high-water mark (VmHWM), read every 0.2 s, so a short peak between reads still counts;
    the anonymous part is sampled."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root, self._stop = psutil.Process(pid), threading.Event()
        self.peak = self.peak_anon = 0  # all resident pages; without file-backed ones
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                return
            for proc in procs:
                try:
                    if "EvalWorker" in " ".join(proc.cmdline()):
                        mem = _proc_status(proc.pid)
                        self.peak = max(self.peak, mem["VmHWM"])
                        self.peak_anon = max(self.peak_anon, mem["RssAnon"])
                except (psutil.Error, OSError, KeyError):
                    continue

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak, self.peak_anon


def run_search(name: str, storage: Path, strategy: str, evals: int, extra: list[str],
               limit: int, batch_size: int | None) -> dict:
    cfg = yaml.safe_load((REPO / "configs/smol.yml").read_text())
    cfg["limit"] = limit
    if batch_size is not None:
        cfg["evaluation"]["batch_size"] = batch_size
    config = storage.parent / f"{name}.yml"
    config.write_text(yaml.safe_dump(cfg))
    shutil.rmtree(storage, ignore_errors=True)
    cmd = [str(BIN / "llm-evo"), "run", str(config), "--storage-path", str(storage),
           "--search", strategy, "--max-fevals", str(evals), "--num-workers", "1",
           "--no-save-final-model", *extra]
    server = nullcontext(None)
    if strategy == "llm":
        from llm_evo.local_llm import MODEL_NAME, local_llm_server

        server = local_llm_server(log_path=storage.parent / f"{name}_llm.log")
    t0 = time.perf_counter()
    with server as url:
        if url:
            cmd += ["--llm-base-url", url, "--llm-model", MODEL_NAME]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        sampler = RssSampler(proc.pid)
        out, err = proc.communicate()
        peak, peak_anon = sampler.stop()
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{name}: llm-evo run exited {proc.returncode}: {err[-2000:]}")
    return {"name": name, "wall": wall, "peak_rss": peak, "peak_anon": peak_anon,
            "stdout": out, "stderr": err,
            **read_ledger(storage)}


def read_ledger(storage: Path) -> dict:
    db = sqlite3.connect(storage / "llm_evo.sqlite")
    rows = db.execute("SELECT kind, label, results_json, score, t_merge, t_eval, t_total, "
                      "status FROM candidates").fetchall()
    db.close()
    parents = {r[1]: json.loads(r[2]) for r in rows if r[0] == "parent" and r[7] == "ok"}
    cands = [r for r in rows if r[0] == "candidate" and r[7] == "ok"]
    best = max(cands, key=lambda r: r[3])
    timing = [r[4:7] for r in cands if r[6]]
    return {"parents": parents, "best": json.loads(best[2]), "n_evals": len(rows),
            "n_failed": sum(r[7] != "ok" for r in rows),
            "merge": mean(t[0] or 0.0 for t in timing), "evaluate": mean(t[1] for t in timing),
            "total": mean(t[2] for t in timing)}


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def skill_mean(results: dict, tasks: list[str], limit: int) -> tuple[float, float]:
    """Mean accuracy over the tasks, and its binomial standard error."""
    accs = [results[f"{t}/acc,none"] for t in tasks]
    var = sum(a * (1 - a) / limit for a in accs) / len(accs) ** 2
    return sum(accs) / len(accs), math.sqrt(var)


def hand_loop(storage: Path, tasks: list[str], tasks_dir: str, n: int,
              limit: int) -> dict:
    """mergekit-yaml then lm_eval per candidate, on the search's best config, n times."""
    work = Path(tempfile.mkdtemp(prefix="smol_hand_"))
    merge_t, eval_t = [], []
    try:
        for i in range(n):
            out = work / f"m{i}"
            t = time.perf_counter()
            subprocess.run([str(BIN / "mergekit-yaml"), str(storage / "best_config.yaml"),
                            str(out), "--copy-tokenizer", "--quiet"], check=True, cwd=REPO,
                           capture_output=True)
            merge_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([str(BIN / "lm_eval"), "run", "--model", "hf", "--model_args",
                            f"pretrained={out},dtype=float32", "--tasks", ",".join(tasks),
                            "--include_path", tasks_dir, "--limit", str(limit),
                            "--batch_size", "32", "--output_path", str(work / f"r{i}")],
                           check=True, cwd=REPO, capture_output=True)
            eval_t.append(time.perf_counter() - t)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"merge": mean(merge_t), "evaluate": mean(eval_t),
            "total": mean(m + e for m, e in zip(merge_t, eval_t, strict=True))}


def holdout(family: dict, storage: Path, tasks: list[str], limit: int, fmt) -> None:
    """The best merge and the parents on the held-out items the search never scored (those
    after the first `limit`): the search picked its best on the first ones, so this is the
    check free of selection bias. Scored with the builder's next-token accuracy, which
    equals lm-eval's (tests/smol/test_search.py, on the best merge)."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    builder = sys.modules["_smol"]
    skills = builder._skills_module()
    items = {t["name"]: [skills.Item(r["text"], tuple(r["choices"]), r["gold"]) for r in (
        json.loads(line) for line in Path(t["data"]).open())][limit:]
        for t in family["tasks"].values()}
    work = Path(tempfile.mkdtemp(prefix="smol_holdout_"))
    try:
        subprocess.run([str(BIN / "mergekit-yaml"), str(storage / "best_config.yaml"),
                        str(work / "best"), "--copy-tokenizer", "--quiet"], check=True,
                       cwd=REPO, capture_output=True)
        paths = {"best merge": work / "best",
                 **{m: Path(family["root"]) / m for m in family["models"]}}
        rows = []
        for name, path in paths.items():
            model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            tok = AutoTokenizer.from_pretrained(path)
            accs = [builder.accuracy(model, tok, items[t]) for t in tasks]
            n = len(items[tasks[0]])
            se = math.sqrt(sum(a * (1 - a) / n for a in accs)) / len(accs)
            rows.append([name, *(f"{a:.3f}" for a in accs), f"{sum(accs) / len(accs):.3f}",
                         f"{se:.3f}"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nheld out from the search ({len(items[tasks[0]])} items per task after the "
          f"first {limit}):")
    print(fmt(["model", *tasks, "mean", "SE"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=60, help="budget of the cma search")
    ap.add_argument("--other-evals", type=int, default=16, help="budget of random and llm")
    ap.add_argument("--strategies", default="cma,random,llm")
    ap.add_argument("--limit", type=int, default=100, help="items per task")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="lm-eval batch size (default: configs/smol.yml's)")
    ap.add_argument("--disk", type=int, default=6, help="candidates of the on-disk run")
    ap.add_argument("--hand", type=int, default=2, help="candidates of the hand loop")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_smol")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()
    fmt = markdown_table if args.markdown else plain_table

    family = build_family()
    tasks = [t["name"] for t in family["tasks"].values()]
    args.out.mkdir(parents=True, exist_ok=True)
    searches = {}
    for strategy in args.strategies.split(","):
        evals = args.evals if strategy == "cma" else args.other_evals
        searches[strategy] = run_search(strategy, args.out / strategy, strategy, evals,
                                        ["--in-memory"], args.limit, args.batch_size)
        print(f"{strategy}: {searches[strategy]['n_evals']} evaluations in "
              f"{searches[strategy]['wall']:.0f} s", file=sys.stderr, flush=True)

    rows = []
    for strategy, s in searches.items():
        best_mean, se = skill_mean(s["best"], tasks, args.limit)
        parent_mean = max(skill_mean(r, tasks, args.limit)[0] for r in s["parents"].values())
        rows.append([strategy, str(s["n_evals"]), str(s["n_failed"]), f"{best_mean:.3f}",
                     f"{parent_mean:.3f}", f"{best_mean - parent_mean:+.3f}", f"{se:.3f}",
                     f"{(best_mean - parent_mean) / se:.1f}", f"{s['wall']:.0f}"])
    first = next(iter(searches.values()))
    prow = [[name] + [f"{r[t + '/acc,none']:.3f}" for t in tasks]
            + [f"{skill_mean(r, tasks, args.limit)[0]:.3f}"]
            for name, r in sorted(first["parents"].items())]
    print(f"\nparents under lm-eval (first {args.limit} items per task):")
    print(fmt(["model", *tasks, "mean"], prow))
    print("\nsearches (in memory; mean over skills; SE = binomial standard error):")
    print(fmt(["strategy", "evals", "failed", "best mean", "best parent", "margin", "SE",
               "margin/SE", "wall s"], rows))

    disk = run_search("disk", args.out / "disk", "random", args.disk, ["--no-in-memory"],
                      args.limit, args.batch_size)
    mem = searches.get("cma") or first
    hand = hand_loop(args.out / mem["name"], tasks, str(Path(family["tasks_dir"])),
                     args.hand, args.limit)
    fp32 = sum(f.stat().st_size for f in (Path(family["root"]) / "base").glob("*.safetensors"))
    bound = (len(family["finetunes"]) + 1 + 1) * fp32 + 2**30
    cost = []
    for label, c in (("in memory", mem), ("on disk", disk), ("by hand", hand)):
        other = c["total"] - c["merge"] - c["evaluate"]
        cost.append([label, f"{c['total']:.2f}", f"{c['merge']:.2f}", f"{c['evaluate']:.2f}",
                     f"{other:.2f}", f"{100 * (1 - c['evaluate'] / c['total']):.0f}%",
                     *(f"{c[k] / 2**30:.2f}" if k in c else "-"
                       for k in ("peak_rss", "peak_anon"))])
    print(f"\nper-candidate cost ({len(tasks)} tasks x {args.limit} items, batch "
          f"{args.batch_size or SMOL_BATCH}; RSS bound "
          f"(inputs + 1) x fp32 + 1 GB = {bound / 2**30:.2f} GiB):")
    print(fmt(["path", "s/cand", "merge", "evaluate", "other", "non-eval share",
               "peak worker RSS GiB", "of it anonymous GiB"], cost))
    holdout(family, args.out / mem["name"], tasks, args.limit, fmt)

    models = [str(Path(family["root"]) / m) for m in family["finetunes"]]
    kin = subprocess.run([str(BIN / "llm-evo"), "kinship-matrix", *models, "--base",
                          str(Path(family["root"]) / "base"), "--labels",
                          ",".join(family["finetunes"])], capture_output=True, text=True)
    print("\nkinship of the fine-tunes (task vectors against the base):")
    print(kin.stdout.strip() or kin.stderr.strip())
    load = os.getloadavg()[0]
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average now {load:.1f}")
    if args.json_out:
        drop = ("stdout", "stderr")
        Path(args.json_out).write_text(json.dumps({
            "searches": {k: {x: y for x, y in v.items() if x not in drop}
                         for k, v in searches.items()},
            "disk": {x: y for x, y in disk.items() if x not in drop}, "hand": hand,
            "rss_bound": bound, "family": {k: family[k] for k in ("scores", "timings")}},
            indent=2))


def plain_table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*r) for r in rows)])


if __name__ == "__main__":
    main()
