"""Screening: score each candidate on a few anchor items per task, estimate the rest.

Every evaluation of a run scores the same items per task (the full subset), so the
responses of every fully scored model (parents and promoted candidates) form a models x
items matrix per task. From it, per task: a 2PL IRT fit (irt.py), anchors chosen as the
items that best explain how those models differ (`irt`) or at random (`random`), and for a
screened candidate an estimate of its mean over the full subset from its anchor responses
(p-IRT). `random` anchors are estimated by their plain
mean, the control that issue #17's bench compares against.

Pure and deterministic: the same fully scored history gives the same anchors and the same
estimates, so a resumed generation re-plans exactly what the interrupted one planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llm_evo.screening.irt import ItemParams, estimate, fit_2pl

Items = dict[str, dict[str, list]]  # "task/metric" -> {"ids": [...], "values": [...]}


def random_anchors(ids: list[int], k: int, seed: int) -> list[int]:
    rng = np.random.default_rng([seed, len(ids), k])
    return sorted(int(i) for i in rng.choice(ids, size=min(k, len(ids)), replace=False))


def irt_anchors(params: ItemParams, k: int) -> list[int]:
    """One item per difficulty stratum (k equal-count strata of the fitted b), the most
    discriminating of each: anchors that separate models across the whole ability range."""
    if k >= len(params.ids):
        return sorted(int(i) for i in params.ids)
    order = np.argsort(params.b, kind="stable")
    picks = [int(params.ids[s[np.argmax(params.a[s])]]) for s in np.array_split(order, k)]
    return sorted(picks)


RIDGE = 1.0  # the ridge penalty of informative_anchors' fits (unit: one test-taker's weight)


def informative_anchors(responses: np.ndarray, params: ItemParams, k: int) -> list[int]:
    """The k items whose responses best explain how the fully scored models differ.

    Greedy forward selection: each step adds the item that most lowers the squared error
    of a ridge regression of the models' subset means on the chosen items' responses. In
    a merge search the test-takers are near neighbours: most items are answered alike by
    every merge, and a few items carry the differences between them; these are the items
    a candidate's rank depends on. Difficulty strata alone (`irt_anchors`) spend anchors
    on items every merge gets right or wrong. Measured with bench/fitness_estimation.py
    (docs/performance.md). Positions into `params.ids`; when fewer than k items vary,
    the rest come from `irt_anchors`.
    """
    y = np.where(np.isnan(responses), np.nanmean(responses, axis=0, keepdims=True),
                 responses)
    y = np.nan_to_num(y, nan=0.0)
    n, m = y.shape
    if k >= m:
        return list(range(m))
    target = y.mean(1)
    varying = [i for i in range(m) if y[:, i].var() > 0]
    chosen: list[int] = []
    while len(chosen) < k and len(chosen) < len(varying):
        best, pick = np.inf, -1
        penalty = RIDGE * np.eye(len(chosen) + 2)
        penalty[0, 0] = 0.0  # the intercept is not shrunk
        for i in varying:
            if i in chosen:
                continue
            x = np.c_[np.ones(n), y[:, chosen + [i]]]
            w = np.linalg.solve(x.T @ x + penalty, x.T @ target)
            err = float(((x @ w - target) ** 2).sum())
            if err < best - 1e-12:
                best, pick = err, i
        chosen.append(pick)
    if len(chosen) < k:
        pos = {int(d): i for i, d in enumerate(params.ids)}
        for d in [*irt_anchors(params, k), *params.ids.tolist()]:
            if len(chosen) == k:
                break
            if pos[int(d)] not in chosen:
                chosen.append(pos[int(d)])
    return sorted(chosen)


@dataclass
class TaskPlan:
    """One task's full subset, its anchors and (with `irt`) its fitted items."""

    ids: list[int]
    anchors: list[int]
    params: ItemParams | None = None
    anchor_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


class Screener:
    """Anchors and estimates for one generation, from the fully scored models so far."""

    def __init__(self, full: Items, history: list[Items], anchors: int, method: str,
                 seed: int):
        """`full`: one fully scored model's items (its ids are each task's full subset);
        `history`: every fully scored model's items (parents, promoted candidates)."""
        if method not in ("irt", "random"):
            raise ValueError(f"screening anchor method must be irt or random, not {method!r}")
        self.method = method
        self.plans: dict[str, TaskPlan] = {}
        for task, got in full.items():
            ids = sorted(got["ids"])
            if method == "random":
                plan = TaskPlan(ids, random_anchors(ids, anchors, seed))
            else:
                responses = _matrix(history, task, ids)
                params = fit_2pl(responses, np.asarray(ids))
                picks = informative_anchors(responses, params, anchors)
                plan = TaskPlan(ids, [ids[i] for i in picks], params)
            pos = {d: i for i, d in enumerate(ids)}
            plan.anchor_index = np.array([pos[d] for d in plan.anchors], dtype=int)
            self.plans[task] = plan

    def anchor_samples(self) -> dict[str, list[int]]:
        """lm-eval `samples` for the anchor pass: doc ids per task name."""
        return _by_name({t: p.anchors for t, p in self.plans.items()})

    def rest_samples(self) -> dict[str, list[int]]:
        """lm-eval `samples` for a promoted candidate: every item not yet scored."""
        return _by_name({t: sorted(set(p.ids) - set(p.anchors))
                         for t, p in self.plans.items()})

    @property
    def items_per_candidate(self) -> int:
        return sum(len(p.anchors) for p in self.plans.values())

    def estimate(self, anchor_items: Items) -> dict[str, float]:
        """Per `task/metric`, the estimated mean over the full subset."""
        out = {}
        for task, plan in self.plans.items():
            got = dict(zip(anchor_items[task]["ids"], anchor_items[task]["values"],
                           strict=True))
            y = np.array([got[d] for d in plan.anchors], dtype=np.float64)
            if plan.params is None:
                out[task] = float(y.mean())
            else:
                out[task] = estimate(plan.params, plan.anchor_index, y)
        return out

    def combine(self, anchor_items: Items, rest_items: Items) -> Items:
        """A promoted candidate's full-subset items: its anchors plus the rest."""
        out = {}
        for task in self.plans:
            pairs = dict(zip(anchor_items[task]["ids"], anchor_items[task]["values"],
                             strict=True))
            pairs.update(zip(rest_items[task]["ids"], rest_items[task]["values"], strict=True))
            ids = sorted(pairs)
            out[task] = {"ids": ids, "values": [pairs[i] for i in ids]}
        return out


def promoted(estimates: list[float | None], share: float) -> list[int]:
    """Indices of the best `share` of a generation by estimate (at least one); ties go to
    the earlier index, failed candidates (None) are never promoted."""
    ok = [i for i, e in enumerate(estimates) if e is not None]
    n = min(len(ok), max(1, int(np.ceil(share * len(estimates)))))
    return sorted(sorted(ok, key=lambda i: (-estimates[i], i))[:n])


def means(items: Items) -> dict[str, float]:
    return {task: float(np.mean(v["values"])) for task, v in items.items()}


def _matrix(history: list[Items], task: str, ids: list[int]) -> np.ndarray:
    pos = {d: i for i, d in enumerate(ids)}
    rows = np.full((len(history), len(ids)), np.nan)
    for r, items in enumerate(history):
        got = items.get(task)
        for d, v in zip(got["ids"], got["values"], strict=True) if got else ():
            if d in pos:
                rows[r, pos[d]] = v
    return rows


def _by_name(per_key: dict[str, list[int]]) -> dict[str, list[int]]:
    """`task/metric` keys to lm-eval task names (a task scored on two metrics: one entry)."""
    out: dict[str, list[int]] = {}
    for key, ids in per_key.items():
        name = key.rsplit("/", 1)[0]
        out[name] = sorted(set(out.get(name, [])) | set(ids))
    return out
