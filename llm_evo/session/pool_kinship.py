"""Pair kinship for the pool loop, measured once per pair and kept in the pool ledger.

Why apart from the loop: it is the loop's one expensive measurement (a streaming read of the
checkpoints), tested on its own without Ray, and a resumed run refills it from the ledger.
"""

from __future__ import annotations

import math

from llm_evo.pool import algorithm as algo
from llm_evo.storage import PoolLedger


class KinshipCache:
    """Pair kinship against the base, each pair measured once and stored in the ledger.

    Missing pairs are filled with one streaming `kinship_matrix` pass over every model
    involved, which reads each checkpoint once however many pairs it is in.
    """

    def __init__(self, base: str, metric: str, ledger: PoolLedger, run_id: int):
        self.base = base
        self.metric = metric
        self.ledger = ledger
        self.run_id = run_id
        self.values: dict[tuple[str, str], float] = {}
        self.paths: dict[str, str] = {}

    def ensure(self, pairs: list[tuple[str, str]]) -> None:
        missing = [p for p in pairs if algo.pair_key(*p) not in self.values and p[0] != p[1]]
        if not missing:
            return
        from llm_evo.kinship import kinship_matrix

        names = sorted({n for p in missing for n in p})
        matrix = kinship_matrix([self.paths[n] for n in names], self.base, labels=names)
        values = matrix.metric(self.metric)
        rows = []
        for i, a in enumerate(names):
            for j in range(i + 1, len(names)):
                b = names[j]
                v = float(values[i, j])
                self.values[algo.pair_key(a, b)] = v
                rows.append((*algo.pair_key(a, b), self.metric, None if math.isnan(v) else v))
        self.ledger.add_kinship(self.run_id, rows)

    def __call__(self, a: str, b: str) -> float:
        self.ensure([(a, b)])
        return self.values[algo.pair_key(a, b)]
