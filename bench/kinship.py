"""Benchmark `llm-evo kinship` and `llm-evo kinship-matrix` on a family of >= 1 GiB models.

Generates a Llama-shaped base (bf16, sharded safetensors with an index) and four fine-tunes
whose deltas share a common direction, so the kinship values are known in advance. Then, with
the page cache warm, it times `cat FILES > /dev/null` and the two commands (as subprocesses,
peak RSS from wait4), and prints a table. Run from the repo root:

    python bench/kinship.py [--layers 10] [--dir /tmp/x] [--keep] [--repeat 3] [--markdown]

The C kernel is used where it was built; `LLM_EVO_KINSHIP_KERNEL=numpy` times the fallback.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from _table import markdown_table  # bench/, the script's own folder

HIDDEN, INTER, VOCAB, KV = 2048, 5632, 32000, 512
# Fraction of each fine-tune's delta along the shared direction: cs(i, j) ~= c_i * c_j.
SHARED = (0.9, 0.8, 0.6, 0.3)
DELTA_SCALE = 2e-3
STARTUP = "import llm_evo.kinship, llm_evo.cli.kinship, llm_evo.kinship.fast, threadpoolctl"


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a small Llama (GQA, untied embeddings)."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes |= {
            p + "input_layernorm.weight": (HIDDEN,),
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV, HIDDEN),
            p + "self_attn.v_proj.weight": (KV, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "post_attention_layernorm.weight": (HIDDEN,),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
        }
    shapes |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    return shapes


def write_model(out: Path, layers: int, member: int | None, shards: int = 3) -> None:
    """member None writes the base; member i writes fine-tune i (base + its delta)."""
    import torch
    from safetensors.torch import save_file

    shapes = llama_shapes(layers)
    names = list(shapes)
    out.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {}
        for name in names[s * per_shard : (s + 1) * per_shard]:
            seed = zlib.crc32(name.encode())
            gen = torch.Generator().manual_seed(seed)
            t = torch.randn(shapes[name], generator=gen).mul_(0.02)
            if member is not None:
                c = SHARED[member]
                shared = torch.randn(shapes[name], generator=gen)
                own = torch.randn(
                    shapes[name], generator=torch.Generator().manual_seed(seed + 1 + member)
                )
                t.add_(shared.mul_(c).add_(own, alpha=(1 - c * c) ** 0.5), alpha=DELTA_SCALE)
                del shared, own
            tensors[name] = t.to(torch.bfloat16)
            del t
            weight_map[name] = file
        save_file(tensors, str(out / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "num_hidden_layers": layers,
        "intermediate_size": INTER,
        "vocab_size": VOCAB,
        "tie_word_embeddings": False,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))


def weight_files(model: Path) -> list[str]:
    return sorted(str(p) for p in model.glob("*.safetensors"))


def size_bytes(models: list[Path]) -> int:
    return sum(os.path.getsize(f) for m in models for f in weight_files(m))


def run_measured(cmd: list[str]) -> tuple[float, float, int, str]:
    """Run cmd; return (wall s, CPU s, peak RSS MiB of that process alone, stdout).

    `cat` writes to /dev/null, as in `cat files > /dev/null`.
    """
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        sink = subprocess.DEVNULL if cmd[0] == "cat" else out
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
        out.seek(0)
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss // 1024, out.read().decode()


def best_of(cmd: list[str], repeat: int) -> tuple[float, float, int, str]:
    """The fastest of `repeat` runs (wall, its CPU time, stdout); RSS is the max of all runs."""
    runs = [run_measured(cmd) for _ in range(repeat)]
    wall, cpu, _, out = min(runs, key=lambda r: r[0])
    return wall, cpu, max(r[2] for r in runs), out


def cat_cmd(models: list[Path]) -> list[str]:
    return ["cat", *(f for m in models for f in weight_files(m))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=10, help="10 layers = 1.16 GB per model")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep generated models (always with --dir)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (best is kept)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # internal: write one model
    ap.add_argument("--member", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        write_model(args.write, args.layers, args.member)
        return

    root = args.dir or Path(tempfile.mkdtemp(prefix="kinship-bench-"))
    base, fts = root / "base", [root / f"ft{i}" for i in range(len(SHARED))]
    pair, family = [fts[0], fts[1], base], [*fts, base]
    # the console script of this interpreter's environment, activated or not
    beside = Path(sys.executable).parent / "llm-evo"
    exe = str(beside) if beside.is_file() else shutil.which("llm-evo") or "llm-evo"
    runs = [
        ("kinship A B BASE", pair, [exe, "kinship", *map(str, pair), "-m", "cs,pcc,ed", "--json"]),
        (
            "kinship-matrix, 4 models",
            family,
            [exe, "kinship-matrix", *map(str, fts), "--base", str(base), "--json"],
        ),
    ]
    rows, results = [], []
    try:
        for i, path in [(None, base), *enumerate(fts)]:
            if not (path / "model.safetensors.index.json").exists():
                # In a child process: a child's peak-RSS counter starts from its parent's RSS,
                # so this process must stay small for the measurements below to be its own.
                t = time.perf_counter()
                member = [] if i is None else ["--member", str(i)]
                gen = [sys.executable, __file__, "--write", str(path), "--layers", str(args.layers)]
                subprocess.run([*gen, *member], check=True)
                print(f"wrote {path} in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        run_measured(cat_cmd(family))  # warm the page cache
        # What every run pays before it reads a byte: the interpreter and our imports.
        startup, startup_cpu, _, _ = best_of([sys.executable, "-c", STARTUP], args.repeat)
        for label, models, cmd in runs:
            read, read_cpu, _, _ = best_of(cat_cmd(models), args.repeat)
            wall, cpu, rss, out = best_of(cmd, args.repeat)
            res = json.loads(out)
            rows.append((label, models, size_bytes(models), read, read_cpu, wall, cpu,
                         res["report"], rss))  # fmt: skip
            results.append(res["metrics"]["cs"])
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    header = ["run", "files", "GB", "cat s", "cat CPU s", "wall s", "CPU s", "pass s",
              "pass CPU s", "wall/cat", "pass/cat", "bytes read / file bytes",
              "peak RSS MB"]  # fmt: skip
    table = []
    for label, models, nbytes, read, read_cpu, wall, cpu, report, rss in rows:
        table.append(
            [label, str(len(models)), f"{nbytes / 1e9:.2f}", f"{read:.2f}", f"{read_cpu:.2f}",
             f"{wall:.2f}", f"{cpu:.2f}", f"{report['elapsed_s']:.2f}",
             f"{cpu - startup_cpu:.2f}", f"{wall / read:.1f}",
             f"{report['elapsed_s'] / read:.1f}", f"{report['bytes_read'] / nbytes:.3f}", str(rss)]
        )  # fmt: skip
    if args.markdown:
        print(markdown_table(header, table))
    else:
        widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
        for row in [header, *table]:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    cs_pair, cs_matrix = results
    from llm_evo.kinship.fast import kernel

    print(
        f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; kernel {kernel(2)}"
        f" (LLM_EVO_KINSHIP_KERNEL); {args.layers} layers,"
        f" {rows[-1][2] / len(family) / 1e9:.2f} GB of bf16 per model; warm page cache; best of"
        f" {args.repeat}; startup (python + imports): {startup:.2f}s wall,"
        f" {startup_cpu:.2f}s CPU; this process's own peak RSS:"
        f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB"
    )
    print(
        f"cs(ft0, ft1) = {cs_pair:.4f} (built as {SHARED[0] * SHARED[1]:.2f}); matrix cs row ft0: "
        + ", ".join(f"{v:.3f}" for v in cs_matrix[0])
    )


if __name__ == "__main__":
    main()
