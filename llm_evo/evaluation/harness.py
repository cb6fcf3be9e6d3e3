"""lm-eval, set up once per worker and reused for every candidate.

`lm_eval.simple_evaluate` rebuilds the task objects, reads the datasets, hashes the git
tree and collects environment info on every call: about 0.7 s per candidate on the tiny
family, more than the forward passes themselves. Here the tasks are loaded once through
the public `TaskManager.load` and each candidate runs only `lm_eval.evaluator.evaluate`,
with the seeds reset first so that every candidate sees exactly the same prompts and
few-shot examples as `simple_evaluate` would have shown it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec


@dataclass
class Scored:
    """lm-eval's per-task results, and each scored item's metric value per `task/metric`:
    {"ids": lm-eval doc ids, "values": the metric per doc}, for metrics that are per item
    (acc, acc_norm, exact_match; a corpus-level metric such as BLEU has no items)."""

    results: dict[str, dict[str, Any]]
    items: dict[str, dict[str, list]] = field(default_factory=dict)


def items_of(samples: dict[str, list[dict]], tasks: tuple[TaskSpec, ...]
             ) -> dict[str, dict[str, list]]:
    """Per-item values of each task's scored metric, from lm-eval's logged samples."""
    out: dict[str, dict[str, list]] = {}
    for task in tasks:
        name, _, filter_key = task.metric.partition(",")
        ids, values = [], []
        for sample in samples.get(task.name, ()):
            if sample.get("filter", "none") != (filter_key or "none"):
                continue
            value = sample.get(name)
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, int | float) or not math.isfinite(value):
                ids = []  # not a per-item number: this metric has no items
                break
            ids.append(int(sample["doc_id"]))
            values.append(float(value))
        if ids:
            order = sorted(range(len(ids)), key=ids.__getitem__)
            out[f"{task.name}/{task.metric}"] = {"ids": [ids[i] for i in order],
                                                 "values": [values[i] for i in order]}
    return out


def fixed_subset(spec: WorkerSpec, tasks: dict[str, Any]) -> dict[str, list[int]] | None:
    """With `shuffle` and `limit`, one seeded subset of example indices per task.

    It depends only on the seed and the task's size, never on the worker or the process,
    so every worker of a run (and every rerun with that seed) scores the same examples.
    """
    if not (spec.shuffle and spec.limit):
        return None
    import numpy as np

    subset = {}
    for name, task in tasks.items():
        n = len(task.eval_docs)
        rng = np.random.default_rng([spec.seed, n])
        k = min(spec.limit, n)
        subset[name] = sorted(int(i) for i in rng.choice(n, size=k, replace=False))
    return subset


class Harness:
    """The run's lm-eval tasks, loaded once; `run(lm)` scores whatever model `lm` wraps."""

    def __init__(self, spec: WorkerSpec, task_manager: Any):
        self.spec = spec
        # A task scored on two metrics is listed twice in `tasks:`; it is run once.
        self.loaded = task_manager.load(list(dict.fromkeys(t.name for t in spec.tasks)))
        self.tasks: dict[str, Any] = dict(self.loaded["tasks"])
        for task in self.tasks.values():
            # The same num_fewshot rule as simple_evaluate: a task that pins 0 keeps it.
            if spec.num_fewshot is not None:
                if task.get_config("num_fewshot") != 0:
                    task.set_config(key="num_fewshot", value=spec.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
        self.samples = fixed_subset(spec, self.tasks)

    def run(self, lm: Any, samples: dict[str, list[int]] | None = None) -> Scored:
        """lm-eval's per-task results, and per-item values, for the model behind `lm`;
        `samples` (doc ids per task: screening's anchors, or the rest) replaces the run's
        subset."""
        from lm_eval.evaluator import evaluate

        self._reseed()
        chat = self.spec.apply_chat_template
        out = evaluate(
            lm=lm,
            task_dict=self.loaded,
            limit=None if (samples or self.samples) else self.spec.limit,
            samples=samples or self.samples,
            bootstrap_iters=0,
            log_samples=True,  # per-item results for the ledger (cheap next to scoring)
            apply_chat_template=chat,
            fewshot_as_multiturn=self.spec.fewshot_as_multiturn and chat,
        )
        if not out or "results" not in out:
            raise RuntimeError("lm-eval returned no results")
        return Scored(out["results"], items_of(out.get("samples") or {}, self.spec.tasks))

    def _reseed(self) -> None:
        """What simple_evaluate seeds on each call, so reuse changes nothing."""
        import random

        import numpy as np
        import torch

        seed = self.spec.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        for task in self.tasks.values():
            task.set_fewshot_seed(seed=seed)
