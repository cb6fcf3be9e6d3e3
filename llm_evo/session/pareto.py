"""`search.objective: pareto`: the hook that keeps the run's front, in the ledger and on disk.

Users who merge for several skills want the trade-off between them, not one weighted sum
chosen in advance. After each generation the hook recomputes the non-dominated set from
the ledger (every successful candidate, so a resumed run's front is the same as an
uninterrupted run's), stores it in the ledger's `pareto` table, and rewrites `pareto/` in
the storage folder: one mergekit config per front member and `front.json`. The parents
are never on the front (they are what the front is measured against), and
`best_config.yaml` stays the best weighted score. The math is in `llm_evo.pareto`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_evo.pareto import front_of, objective_keys
from llm_evo.session.hooks import SearchHook

if TYPE_CHECKING:
    from llm_evo.config import RunConfig
    from llm_evo.storage import CandidateRecord, RunStorage
    from llm_evo.strategies.base import Strategy


class ParetoHook(SearchHook):
    """Keeps the run's front in the ledger and in `pareto/` after every generation."""

    name = "pareto"

    def __init__(self, config: RunConfig, storage: RunStorage, root: str | Path) -> None:
        self.keys = objective_keys(config)
        self.storage = storage
        self.folder = Path(root) / "pareto"

    def after_generation(self, run_id: int, generation: int, strategy: Strategy) -> None:
        front = front_of(self.storage.candidates(run_id), self.keys)
        self.storage.set_front(run_id, [(c.generation, c.idx) for c in front], generation)
        self.write_folder(front)

    def write_folder(self, front: Sequence[CandidateRecord]) -> None:
        """One `g{generation}_c{idx}.yaml` per member and front.json; stale files go."""
        self.folder.mkdir(parents=True, exist_ok=True)
        names = set()
        rows = []
        for c in front:
            name = f"g{c.generation:03d}_c{c.idx:03d}.yaml"
            names.add(name)
            target = self.folder / name
            if not target.is_file():
                tmp = target.with_suffix(".tmp")
                tmp.write_text(c.merge_config or "")
                os.replace(tmp, target)
            rows.append({"generation": c.generation, "idx": c.idx, "config": name,
                         "score": c.raw_score if c.raw_score is not None else c.score,
                         "objectives": {k: c.results[k] for k, _ in self.keys}})
        for stale in self.folder.glob("g*_c*.yaml"):
            if stale.name not in names:
                stale.unlink()
        tmp = self.folder / "front.json.tmp"
        tmp.write_text(json.dumps({"objectives": [k for k, _ in self.keys], "front": rows},
                                  indent=1))
        os.replace(tmp, self.folder / "front.json")

    def summary(self, candidates: Sequence[CandidateRecord]) -> dict[str, Any] | None:
        front = front_of(candidates, self.keys)
        return {"size": len(front), "folder": str(self.folder),
                "objectives": [k for k, _ in self.keys]}
