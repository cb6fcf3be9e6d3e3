#!/usr/bin/env python
"""Acceptance check for the tiny model family, with the real mergekit and lm-eval.

The demo and the end-to-end tests rely on two properties of the family built by
make_tiny_family.py; this script measures them and exits non-zero if either fails:

1. each fine-tune is clearly the best model on its own skill (>= MIN_EXPERT_ACC and at
   least MIN_EXPERT_GAP above the base and the other fine-tunes);
2. task arithmetic of the fine-tunes (weights 1.0, no normalisation) beats every parent
   (base and fine-tunes) on the mean accuracy over all tasks by at least MIN_MERGE_GAIN:
   the merge the evolutionary search has to find.

Usage: ``python scripts/check_tiny_family.py [--out models/tiny] [--force]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

MIN_EXPERT_ACC = 0.85
MIN_EXPERT_GAP = 0.25
MIN_MERGE_GAIN = 0.05


def _load_builder() -> ModuleType:
    """Import make_tiny_family.py from this folder (scripts/ is not a package)."""
    path = Path(__file__).resolve().parent / "make_tiny_family.py"
    spec = importlib.util.spec_from_file_location("make_tiny_family", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def merge_configs(family: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A few simple mergekit configs over the family's fine-tunes."""
    paths = {name: info["path"] for name, info in family["models"].items()}
    fts = family["finetunes"]
    base = paths[family["base"]]

    def task_arithmetic(weight: float) -> dict[str, Any]:
        return {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": paths[m], "parameters": {"weight": weight}} for m in fts],
            "parameters": {"normalize": False},
            "dtype": "float32",
        }

    return {
        "ta_1.0": task_arithmetic(1.0),
        "ta_0.5": task_arithmetic(0.5),
        "linear_0.5": {
            "merge_method": "linear",
            "models": [{"model": paths[m], "parameters": {"weight": 1.0 / len(fts)}}
                       for m in fts],
            "parameters": {"normalize": False},
            "dtype": "float32",
        },
    }


def run_merges(configs: dict[str, dict[str, Any]], work: Path) -> dict[str, Path]:
    """Merge each config with mergekit as a library; returns the output folders."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    options = MergeOptions(device="cpu", copy_tokenizer=True, write_model_card=False,
                           quiet=True, random_seed=0)
    outputs = {}
    for name, cfg in configs.items():
        out = work / name
        run_merge(MergeConfiguration.model_validate(cfg), str(out), options=options)
        outputs[name] = out
    return outputs


def check(scores: dict[str, dict[str, float]], family: dict[str, Any]) -> list[str]:
    """The failed properties, as readable lines (empty when all hold)."""
    failures = []
    tasks = family["tasks"]
    parents = [family["base"], *family["finetunes"]]
    for skill, task in tasks.items():
        expert, name = task["expert"], task["name"]
        acc = scores[expert][name]
        others = max(scores[p][name] for p in parents if p != expert)
        if acc < MIN_EXPERT_ACC:
            failures.append(f"{expert} on {name}: {acc:.3f} < {MIN_EXPERT_ACC}")
        if acc - others < MIN_EXPERT_GAP:
            failures.append(f"{expert} on {name}: only {acc - others:+.3f} over the others "
                            f"(need {MIN_EXPERT_GAP}) [{skill}]")

    def mean(label: str) -> float:
        return sum(scores[label][t] for t in family["task_names"]) / len(family["task_names"])

    best_parent = max(mean(p) for p in parents)
    gain = mean("ta_1.0") - best_parent
    if gain < MIN_MERGE_GAIN:
        failures.append(f"task arithmetic 1.0/1.0 mean {mean('ta_1.0'):.3f} is only "
                        f"{gain:+.3f} over the best parent (need {MIN_MERGE_GAIN})")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/tiny"))
    parser.add_argument("--force", action="store_true", help="rebuild the family first")
    args = parser.parse_args(argv)

    builder = _load_builder()
    t0 = time.perf_counter()
    family = builder.build_family(args.out, force=args.force)
    print(f"family: {family['root']} ({time.perf_counter() - t0:.1f}s)")

    with tempfile.TemporaryDirectory(prefix="tiny-merges-") as tmp:
        t1 = time.perf_counter()
        merged = run_merges(merge_configs(family), Path(tmp))
        print(f"merges: {', '.join(merged)} ({time.perf_counter() - t1:.1f}s)")
        models: dict[str, Any] = {n: i["path"] for n, i in family["models"].items()}
        models.update({n: str(p) for n, p in merged.items()})
        t2 = time.perf_counter()
        scores = builder.evaluate(models, Path(family["tasks_dir"]), family["task_names"])
        print(f"lm-eval: {len(models)} models ({time.perf_counter() - t2:.1f}s)\n")

    print(builder.format_table(scores, family["task_names"]))
    failures = check(scores, family)
    print()
    for line in failures:
        print(f"FAIL: {line}")
    print("OK: all properties hold" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
