"""The pool ledger: `llm_evo_pool.sqlite` in the storage path, written by `llm-evo pool`.

A ledger of its own, beside the run ledger, because a pool run has no genome or strategy:
its record is a family tree. Every model (input or merge), its parents, the kinship of
those parents, its score and whether it was deleted is one row of `pool_models`; each
round's top-k is a row of `pool_rounds`; every kinship measured is a row of `pool_kinship`.
Each write is its own transaction, as in the run ledger (both build on `base.Ledger`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_evo.storage.base import Ledger, held_ledgers, runs_table

_TABLES = runs_table("pool_runs", "stop_reason TEXT") + """
CREATE TABLE IF NOT EXISTS pool_models (
    run_id INTEGER NOT NULL REFERENCES pool_runs(id),
    name TEXT NOT NULL,
    round INTEGER NOT NULL,
    origin TEXT NOT NULL,
    path TEXT NOT NULL,
    parent_a TEXT,
    parent_b TEXT,
    parent_kinship REAL,
    exploration INTEGER NOT NULL DEFAULT 0,
    merge_config TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    score REAL,
    results_json TEXT,
    error TEXT,
    eval_order INTEGER,
    t_merge REAL,
    t_eval REAL,
    deleted_round INTEGER,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS pool_rounds (
    run_id INTEGER NOT NULL REFERENCES pool_runs(id),
    round INTEGER NOT NULL,
    top_k_json TEXT NOT NULL,
    best TEXT,
    best_score REAL,
    top_k_kinship REAL,
    evaluations INTEGER NOT NULL,
    changed INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS pool_kinship (
    run_id INTEGER NOT NULL REFERENCES pool_runs(id),
    model_a TEXT NOT NULL,
    model_b TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, model_a, model_b, metric)
);
"""


@dataclass(frozen=True)
class ModelRecord:
    """One pool member as stored: an input model (round 0) or a pairwise merge."""

    name: str
    round: int
    origin: str  # "input" or "merge"
    path: str
    parent_a: str | None = None
    parent_b: str | None = None
    parent_kinship: float | None = None
    exploration: bool = False
    merge_config: str | None = None
    status: str = "pending"  # pending, ok, failed
    score: float | None = None
    results: dict[str, Any] | None = None
    error: str | None = None
    eval_order: int | None = None
    t_merge: float | None = None
    t_eval: float | None = None
    deleted_round: int | None = None


@dataclass(frozen=True)
class RoundRecord:
    round: int
    top_k: list[str]
    best: str | None
    best_score: float | None
    top_k_kinship: float | None
    evaluations: int
    changed: bool


_MODEL_COLS = ("name", "round", "origin", "path", "parent_a", "parent_b", "parent_kinship",
               "exploration", "merge_config", "status", "score", "results_json", "error",
               "eval_order", "t_merge", "t_eval", "deleted_round")


class PoolLedger(Ledger):
    """Pool runs, their models (the lineage), rounds and kinship values."""

    FILENAME = "llm_evo_pool.sqlite"
    WHAT = "pool ledger"
    RUNS = "pool_runs"
    RUN_COLUMNS = ("id", "created", "config_json", "config_hash", "status", "stop_reason",
                   "finished")
    SCHEMA = _TABLES

    # ---- runs ------------------------------------------------------------------------------
    def create_run(self, config_json: str, config_hash: str, versions: dict[str, str]) -> int:
        return self._create_run(config_json, config_hash, versions)

    def finish_run(self, run_id: int, status: str, stop_reason: str | None) -> None:
        self.set_status(run_id, status, stop_reason=stop_reason)

    def reopen_run(self, run_id: int) -> None:
        """A resumed run is running again until it ends."""
        self.set_status(run_id, "running", stop_reason=None)

    def runs(self) -> list[dict[str, Any]]:
        return self._run_rows(self.RUN_COLUMNS)

    def summaries(self) -> list[dict[str, Any]]:
        rows = []
        for run in self.runs():
            models = self.models(run["id"])
            scored = [m for m in models if m.status in ("ok", "failed")]
            scores = [m.score for m in models if m.status == "ok" and m.score is not None]
            rows.append({"id": run["id"], "created": run["created"], "status": run["status"],
                         "stop_reason": run["stop_reason"], "evaluations": len(scored),
                         "best_score": max(scores) if scores else None,
                         "rounds": max((m.round for m in models), default=0)})
        return rows

    # ---- models ----------------------------------------------------------------------------
    def add_model(self, run_id: int, rec: ModelRecord) -> None:
        values = (rec.name, rec.round, rec.origin, rec.path, rec.parent_a, rec.parent_b,
                  rec.parent_kinship, int(rec.exploration), rec.merge_config, rec.status,
                  rec.score, json.dumps(rec.results) if rec.results is not None else None,
                  rec.error, rec.eval_order, rec.t_merge, rec.t_eval, rec.deleted_round)
        cols = ", ".join(("run_id", *_MODEL_COLS, "created"))
        marks = ", ".join("?" * (len(_MODEL_COLS) + 2))
        self._tx(f"INSERT OR REPLACE INTO pool_models ({cols}) VALUES ({marks})",
                 (run_id, *values, time.time()))

    def set_result(self, run_id: int, name: str, *, status: str, score: float | None,
                   results: dict[str, Any] | None, error: str | None, eval_order: int,
                   t_eval: float | None) -> None:
        self._tx("UPDATE pool_models SET status = ?, score = ?, results_json = ?, error = ?, "
                 "eval_order = ?, t_eval = ? WHERE run_id = ? AND name = ?",
                 (status, score, json.dumps(results) if results is not None else None, error,
                  eval_order, t_eval, run_id, name))

    def set_merged(self, run_id: int, name: str, t_merge: float | None) -> None:
        self._tx("UPDATE pool_models SET t_merge = ? WHERE run_id = ? AND name = ?",
                 (t_merge, run_id, name))

    def set_merge_failed(self, run_id: int, name: str, error: str) -> None:
        self._tx("UPDATE pool_models SET status = 'failed', error = ? WHERE run_id = ? AND "
                 "name = ?", (error, run_id, name))

    def mark_deleted(self, run_id: int, name: str, round_: int) -> None:
        self._tx("UPDATE pool_models SET deleted_round = ? WHERE run_id = ? AND name = ?",
                 (round_, run_id, name))

    def models(self, run_id: int) -> list[ModelRecord]:
        rows = self.conn.execute(
            f"SELECT {', '.join(_MODEL_COLS)} FROM pool_models WHERE run_id = ? "
            "ORDER BY round, created, name", (run_id,)).fetchall()
        out = []
        for r in rows:
            d = dict(zip(_MODEL_COLS, r, strict=True))
            d["exploration"] = bool(d["exploration"])
            raw = d.pop("results_json")
            d["results"] = json.loads(raw) if raw else None
            out.append(ModelRecord(**d))
        return out

    # ---- rounds and kinship ----------------------------------------------------------------
    def add_round(self, run_id: int, rec: RoundRecord) -> None:
        self._tx("INSERT OR REPLACE INTO pool_rounds (run_id, round, top_k_json, best, "
                 "best_score, top_k_kinship, evaluations, changed, created) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (run_id, rec.round, json.dumps(rec.top_k), rec.best, rec.best_score,
                  rec.top_k_kinship, rec.evaluations, int(rec.changed), time.time()))

    def rounds(self, run_id: int) -> list[RoundRecord]:
        rows = self.conn.execute(
            "SELECT round, top_k_json, best, best_score, top_k_kinship, evaluations, changed "
            "FROM pool_rounds WHERE run_id = ? ORDER BY round", (run_id,)).fetchall()
        return [RoundRecord(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5], bool(r[6]))
                for r in rows]

    def add_kinship(self, run_id: int, values: list[tuple[str, str, str, float | None]]) -> None:
        self._tx_many("INSERT OR REPLACE INTO pool_kinship (run_id, model_a, model_b, metric, "
                      "value) VALUES (?, ?, ?, ?, ?)", [(run_id, *v) for v in values])

    def kinship(self, run_id: int) -> dict[tuple[str, str], float | None]:
        rows = self.conn.execute("SELECT model_a, model_b, value FROM pool_kinship "
                                 "WHERE run_id = ?", (run_id,)).fetchall()
        return {(a, b): v for a, b, v in rows}


FILENAME = PoolLedger.FILENAME


def is_pool_storage(path: str | Path) -> bool:
    """Whether `open_ledger(path)` opens a pool ledger (a folder holding a run ledger too
    opens that one)."""
    return held_ledgers(path)[:1] == [PoolLedger]
