"""The greedy loop's decisions, as pure functions: no Ray, no lm-eval, no files.

Algorithm 1 of arXiv 2410.12613, as implemented here:

1. Generation 1 merges every pair of the n input models; the inputs and the merges are
   scored, and the best k become the top-k.
2. Each later round merges every pair of the top-k that was never merged before (a pair's
   merge is deterministic, so repeating it would only re-score the same model), and, with
   exploration on, the best model with its least related partner (lowest kinship; for `ed`,
   the largest distance) among the models still on disk: the top-k and the user's input
   models, which are never deleted. A partner already paired with the best this round or
   earlier is passed over, so the exploration merge is always a new model.
3. The new models are scored and the top-k updated. The loop stops when the top-k does not
   change, when no new pair is left, when the top-k's mean kinship passes `kinship_stop`,
   or at `max_rounds` / `max_evaluations`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

Kin = Callable[[str, str], float]


@dataclass(frozen=True)
class Member:
    """A scored model. `order` is when it was created (inputs in the config's order, then
    each round's merges in plan order): on equal scores the older one ranks first, so the
    top-k never changes on a tie, the loop always ends, and a run does not depend on which
    worker finished first."""

    name: str
    score: float
    order: int


@dataclass(frozen=True)
class PlannedMerge:
    a: str  # the better-ranked parent (slerp's base, weight 1 - t)
    b: str
    exploration: bool = False


def pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def rank(members: Iterable[Member]) -> list[Member]:
    return sorted(members, key=lambda m: (-m.score, m.order))


def select_top_k(members: Iterable[Member], k: int) -> list[str]:
    """Names of the k best members, best first."""
    return [m.name for m in rank(members)[:k]]


def relatedness(value: float, metric: str) -> float:
    """Larger means more related: pcc and cs as they are, ed (a distance) negated."""
    return -value if metric == "ed" else value


def all_pairs(names: Sequence[str],
              merged: Collection[tuple[str, str]] = ()) -> list[PlannedMerge]:
    """Every pair of `names` (in rank order) not merged before."""
    return [PlannedMerge(a, b) for a, b in combinations(names, 2)
            if pair_key(a, b) not in merged]


def exploration_partner(best: str, candidates: Sequence[str], kin: Kin, metric: str,
                        taken: set[tuple[str, str]]) -> str | None:
    """The candidate least related to `best` whose pair with it is new (None if none is).

    A NaN kinship (a delta that is all zero) ranks after every defined one.
    """
    options = [c for c in dict.fromkeys(candidates)
               if c != best and pair_key(best, c) not in taken]
    if not options:
        return None

    def key(name: str) -> tuple[int, float, int]:
        value = kin(best, name)
        if math.isnan(value):
            return (1, 0.0, options.index(name))
        return (0, relatedness(value, metric), options.index(name))

    return min(options, key=key)


def plan_round(top: Sequence[str], retained: Sequence[str], merged: Collection[tuple[str, str]],
               kin: Kin | None, metric: str, exploration: bool) -> list[PlannedMerge]:
    """The merges of one round: new top-k pairs, then the exploration merge (if any).

    `top` is ranked best first; `retained` lists the other models still on disk, in
    the order they should win ties; `kin` is needed only with exploration.
    """
    plan = all_pairs(top, merged)
    if exploration and top:
        if kin is None:
            raise ValueError("exploration needs a kinship function")
        taken = set(merged) | {pair_key(p.a, p.b) for p in plan}
        partner = exploration_partner(top[0], [*top[1:], *retained], kin, metric, taken)
        if partner is not None:
            plan.append(PlannedMerge(top[0], partner, exploration=True))
    return plan


def exploration_candidates(top: Sequence[str], retained: Sequence[str]) -> list[str]:
    """Models whose kinship to the best the exploration step may need."""
    return [n for n in dict.fromkeys([*top[1:], *retained]) if n not in top[:1]]


def mean_kinship(names: Sequence[str], kin: Kin) -> float:
    """Mean pairwise kinship of `names` (NaN pairs left out; NaN if none is defined)."""
    values = [kin(a, b) for a, b in combinations(names, 2)]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def kinship_passed(value: float, threshold: float | None, metric: str) -> bool:
    """Whether the top-k has become as related as `threshold` (ed: as close)."""
    if threshold is None or math.isnan(value):
        return False
    return value <= threshold if metric == "ed" else value >= threshold
