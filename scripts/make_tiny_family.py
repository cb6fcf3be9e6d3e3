#!/usr/bin/env python
"""Build a tiny, deterministic Llama model family for the llm-evo demo and test suite.

The family is one generic base model and one fine-tune per synthetic skill, plus lm-eval
multiple-choice tasks (one per skill) backed by local JSONL files. It exists so merging
(mergekit) and scoring (lm-eval's HF backend) can be exercised end to end offline on a
2-core CPU in a few minutes, with a known-good answer: task arithmetic of the two
fine-tunes beats every parent on the mean over both tasks.

Design choices that make that answer robust:

* the two skills use disjoint vocabularies (numbers and ``,`` for counting on, the
  "arith" skill; made-up nouns, category words and ``;`` for "category"), so their task
  vectors touch mostly different embedding rows and interfere little;
* the base corpus already holds both question formats with random answers: the base
  knows the shapes (and scores at chance), so a fine-tune only learns the mapping itself;
* every answer is one token and the four choices of a question are all of the same kind,
  so a skill's accuracy does not move when the other skill shifts the output distribution;
* fine-tunes are short, replay the base corpus, use no weight decay and a large Adam eps,
  which keeps their deltas small and focused (task arithmetic needs that) and leaves
  embedding rows of tokens they never see untouched.

Usage: ``python scripts/make_tiny_family.py --out models/tiny [--force] [--in-place]
[--seed N]``: the family is built once into the cache outside the clone
(``$LLM_EVO_CACHE``, by default ``~/.cache/llm-evo/tiny/<fingerprint>``, as the SmolLM2
family is) and ``--out`` becomes a link to it, so a fresh clone, or a second clone, of the
same builder reuses it; ``--in-place`` builds into ``--out`` itself; ``--seed`` builds
another family of the same shape. Library use: ``build_linked(link)``, or
``build_family(out_dir)`` for a folder of your own; both return the ``family.json`` content
and reuse a build whose fingerprint (sha256 of the builder's three files and of
``PARAMS``) matches.

The builder is three files: this one (parameters, build, cache, CLI), ``tiny_skills.py``
(the data) and ``tiny_training.py`` (tokenizer, model, training loop).
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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# Everything here is local; never let transformers/datasets/lm-eval reach for the Hub.
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCHEMA_VERSION = 1

# Every knob that changes the output. It is hashed into the fingerprint with this file.
PARAMS: dict[str, Any] = {
    "seed": 1234,
    "threads": 2,
    "model": {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 8,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
    },
    "tokenizer": {"vocab_size": 1000},
    "base": {"steps": 300, "batch_size": 32, "seq_len": 32, "lr": 3e-3, "warmup": 30,
             "cosine": True, "adam_eps": 1e-8, "weight_decay": 0.01, "format_fraction": 0.3},
    # Constant lr, no weight decay and a large Adam eps (tiny gradients give tiny updates):
    # each fine-tune's delta stays concentrated where its skill needs it.
    "finetune": {"steps": 150, "batch_size": 32, "lr": 1e-3, "warmup": 10, "cosine": False,
                 "adam_eps": 1e-5, "weight_decay": 0.0, "replay_fraction": 0.25},
    "skills": {
        "arith": {"task": "tiny_skill_arith", "n_numbers": 40, "max_facts": 4},
        "category": {"task": "tiny_skill_category", "n_entities": 48, "max_facts": 5},
    },
    "n_test": 200,
    "n_train_examples": 4000,
}

HERE = Path(__file__).resolve().parent
# The builder's parts (scripts/ is not a package): hashed into the fingerprint, in this order.
PARTS = ("tiny_skills", "tiny_training")


def _part(name: str) -> ModuleType:
    """scripts/<name>.py, loaded once by path."""
    key = f"_tiny_family_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before exec: its dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]


tiny_skills = _part("tiny_skills")
tiny_training = _part("tiny_training")


def fingerprint() -> str:
    """sha256 over the builder's sources and PARAMS: any change to either forces a rebuild."""
    digest = hashlib.sha256()
    digest.update(Path(__file__).read_bytes())
    for name in PARTS:
        digest.update((HERE / f"{name}.py").read_bytes())
    digest.update(json.dumps(PARAMS, sort_keys=True).encode())
    return digest.hexdigest()


@contextlib.contextmanager
def _build_lock(out_dir: Path) -> Iterator[None]:
    """Serialise concurrent builders (parallel test workers) of the same out_dir."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_family(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "family.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _relocate(out_dir: Path, family: dict[str, Any]) -> dict[str, Any]:
    """A cached family moved or copied elsewhere: repoint paths (YAMLs hold absolute paths)."""
    tasks_dir = out_dir / "tasks"
    for task in family["tasks"].values():
        tiny_skills.write_task_yaml(tasks_dir, task["name"])
        task["data"] = str((tasks_dir / f"{task['name']}.jsonl").resolve())
        task["yaml"] = str((tasks_dir / f"{task['name']}.yaml").resolve())
    family["root"] = str(out_dir)
    family["tasks_dir"] = str(tasks_dir.resolve())
    for model in family["models"].values():
        model["path"] = str((out_dir / model["dir"]).resolve())
    (out_dir / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    return family


def build_family(out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Build the family into out_dir, or return the cached family.json if it is current.

    Safe to call from several processes at once: one builds, the others wait and reuse.
    """
    out_dir = Path(out_dir).resolve()
    fp = fingerprint()
    cached = _read_family(out_dir)
    if not force and cached and cached.get("fingerprint") == fp and cached.get("root") == str(
        out_dir
    ):
        return cached
    with _build_lock(out_dir):
        cached = _read_family(out_dir)
        if not force and cached and cached.get("fingerprint") == fp:
            if cached.get("root") != str(out_dir):
                cached = _relocate(out_dir, cached)
            return cached
        return _build(out_dir, fp)


def build_linked(link: Path, force: bool = False) -> dict[str, Any]:
    """Build (or reuse) the family in the cache outside the clone, keyed by the fingerprint
    (family_cache.py says why), and point `link` (models/tiny) at it. Safe from several
    processes at once (pytest-xdist workers): one builds, the others wait and reuse it."""
    cache = _family_cache()
    folder = cache.cache_root() / "tiny" / fingerprint()[:16]
    family = build_family(folder, force=force)
    with _build_lock(Path(link).absolute()):
        cache.point_link(link, folder)
    return family


def _family_cache() -> ModuleType:
    """scripts/family_cache.py (scripts/ is not a package)."""
    path = HERE / "family_cache.py"
    spec = importlib.util.spec_from_file_location("_family_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(out_dir: Path, fp: str) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    torch.set_num_threads(PARAMS["threads"])
    torch.use_deterministic_algorithms(True)
    seed = PARAMS["seed"]

    if out_dir.exists():
        shutil.rmtree(out_dir)
    tasks_dir = out_dir / "tasks"
    tasks_dir.mkdir(parents=True)

    skills = tiny_skills.make_skills(random.Random(seed), PARAMS["skills"])
    splits = {
        s.name: tiny_skills.split_examples(s, random.Random(f"{seed}-{s.name}-data"),
                               PARAMS["n_train_examples"], PARAMS["n_test"])
        for s in skills
    }
    generic_vocab = tiny_skills.generic_vocabulary()
    vocab_sets = [set(generic_vocab)] + [set(s.vocabulary()) for s in skills]
    for i, a in enumerate(vocab_sets):
        for b in vocab_sets[i + 1:]:
            if a & b:
                raise RuntimeError(f"vocabularies overlap: {sorted(a & b)}")
    tokenizer = tiny_training.train_tokenizer(
        generic_vocab + [w for s in skills for w in s.vocabulary()],
        PARAMS["tokenizer"]["vocab_size"], PARAMS["model"]["max_position_embeddings"])

    def corpus_line(rng: random.Random) -> str:
        return tiny_skills.pretrain_line(rng, skills, PARAMS["base"]["format_fraction"])

    def save(model: Any, name: str) -> Path:
        path = out_dir / name
        model.save_pretrained(path, safe_serialization=True)
        tokenizer.save_pretrained(path)
        return path

    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    base = tiny_training.new_model(tokenizer, PARAMS["model"])
    cfg = PARAMS["base"]
    t = time.perf_counter()
    base_loss = tiny_training.train(
        base,
        tiny_training.pretrain_batches(tokenizer, corpus_line, random.Random(f"{seed}-base"),
                                       cfg["batch_size"], cfg["seq_len"]),
        tokenizer.pad_token_id, cfg, "base",
    )
    timings["base"] = time.perf_counter() - t
    save(base, "base")
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}

    models: dict[str, dict[str, Any]] = {
        "base": {"dir": "base", "role": "base", "skill": None, "train_loss": round(base_loss, 4)}
    }
    cfg = PARAMS["finetune"]
    for skill in skills:
        torch.manual_seed(seed)
        model = tiny_training.new_model(tokenizer, PARAMS["model"])
        model.load_state_dict(base_state)
        t = time.perf_counter()
        loss = tiny_training.train(
            model,
            tiny_training.skill_batches(tokenizer, splits[skill.name][0], corpus_line,
                                        random.Random(f"{seed}-{skill.name}"),
                                        cfg["batch_size"], cfg["replay_fraction"]),
            tokenizer.pad_token_id, cfg, f"ft_{skill.name}",
        )
        timings[f"ft_{skill.name}"] = time.perf_counter() - t
        name = f"ft_{skill.name}"
        save(model, name)
        delta = sum(float((v - base_state[k]).float().norm() ** 2)
                    for k, v in model.state_dict().items()) ** 0.5
        ref = sum(float(v.float().norm() ** 2) for v in base_state.values()) ** 0.5
        models[name] = {"dir": name, "role": "finetune", "skill": skill.name,
                        "train_loss": round(loss, 4), "delta_rel_norm": round(delta / ref, 4)}

    tasks: dict[str, dict[str, Any]] = {}
    for skill in skills:
        data = tiny_skills.write_task(tasks_dir, skill.task, splits[skill.name][1])
        tasks[skill.name] = {"name": skill.task, "data": str(data),
                             "yaml": str((tasks_dir / f"{skill.task}.yaml").resolve()),
                             "n_test": len(splits[skill.name][1]), "num_choices": 4,
                             "metric": "acc", "expert": f"ft_{skill.name}"}
    for info in models.values():
        info["path"] = str((out_dir / info["dir"]).resolve())

    timings["total"] = time.perf_counter() - t0
    family = {
        "schema_version": SCHEMA_VERSION,
        "fingerprint": fp,
        "root": str(out_dir),
        "tasks_dir": str(tasks_dir.resolve()),
        "base": "base",
        "finetunes": [f"ft_{s.name}" for s in skills],
        "models": models,
        "tasks": tasks,
        "task_names": [s.task for s in skills],
        "architecture": "LlamaForCausalLM",
        "params": PARAMS,
        "build_seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    # Written last: its presence (with this fingerprint) marks a complete build.
    (out_dir / "family.json").write_text(json.dumps(family, indent=2) + "\n")
    return family


# --------------------------------------------------------------------------- evaluation


def evaluate(models: Mapping[str, Any], tasks_dir: Path, task_names: Sequence[str],
             batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Accuracy of each model (a path or a loaded HF model) on each task, via lm-eval.

    Uses lm-eval's HF backend on CPU exactly as the search does, so these numbers are the
    ones the demo will see.
    """
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(PARAMS["threads"])
    task_manager = TaskManager(include_path=str(tasks_dir))
    scores: dict[str, dict[str, float]] = {}
    for label, model in models.items():
        if isinstance(model, (str, Path)):
            tokenizer = AutoTokenizer.from_pretrained(str(model))
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=torch.float32)
        else:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
        model.eval()
        lm = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=batch_size)
        result = simple_evaluate(model=lm, tasks=list(task_names), task_manager=task_manager,
                                 log_samples=False, verbosity="ERROR")
        if result is None:
            raise RuntimeError("lm-eval returned no results (not the main rank?)")
        scores[label] = {t: float(result["results"][t]["acc,none"]) for t in task_names}
    return scores


def format_table(scores: Mapping[str, Mapping[str, float]], task_names: Sequence[str]) -> str:
    """A plain-text accuracy table with a mean column."""
    width = max(len("model"), *(len(k) for k in scores))
    head = f"{'model':<{width}}  " + "  ".join(f"{t:>20}" for t in task_names) + "      mean"
    lines = [head, "-" * len(head)]
    for label, row in scores.items():
        vals = [row[t] for t in task_names]
        lines.append(f"{label:<{width}}  " + "  ".join(f"{v:>20.3f}" for v in vals)
                     + f"  {sum(vals) / len(vals):>8.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny"))
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--in-place", action="store_true",
                        help="build into --out itself, not into the cache behind a link")
    parser.add_argument("--no-eval", action="store_true", help="skip the lm-eval table")
    parser.add_argument("--seed", type=int, default=PARAMS["seed"],
                        help="another family of the same shape (other facts, other "
                             "fine-tunes): to check a search result is not one build's luck")
    args = parser.parse_args(argv)
    PARAMS["seed"] = args.seed  # hashed into the fingerprint: each seed has its own cache

    t0 = time.perf_counter()
    build = build_family if args.in_place else build_linked
    family = build(args.out, force=args.force)
    built = time.perf_counter() - t0
    print(f"family at {family['root']} (fingerprint {family['fingerprint'][:12]}, "
          f"{built:.1f}s)")
    if not args.no_eval:
        t1 = time.perf_counter()
        paths = {name: info["path"] for name, info in family["models"].items()}
        scores = evaluate(paths, Path(family["tasks_dir"]), family["task_names"])
        print(format_table(scores, family["task_names"]))
        print(f"eval {time.perf_counter() - t1:.1f}s, total {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
