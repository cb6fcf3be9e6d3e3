"""The run ledger: `llm_evo.sqlite` in the storage path, written by `llm-evo run`.

Everything a run learns is written here first, one transaction per finished evaluation,
so a crash loses nothing completed; progress, reports, W&B and resume all read from it.
Secrets never reach this module: configs hold no keys, and events are written as given
by strategies, which never see a key in their payloads.
"""

from __future__ import annotations

import json
import time
from array import array
from dataclasses import dataclass
from typing import Any

from llm_evo.storage.base import Ledger, runs_table

_TABLES = runs_table("runs", "seed INTEGER NOT NULL") + """
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    generation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL DEFAULT 'candidate',
    label TEXT,
    genotype_json TEXT,
    merge_config TEXT,
    results_json TEXT,
    score REAL,
    raw_score REAL,
    kinship REAL,
    status TEXT NOT NULL,
    error TEXT,
    t_merge REAL,
    t_eval REAL,
    t_total REAL,
    worker TEXT,
    created REAL NOT NULL,
    UNIQUE (run_id, generation, idx)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    generation INTEGER,
    kind TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    step INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    phase TEXT NOT NULL,
    state_json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS items (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    generation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    task TEXT NOT NULL,
    doc_ids BLOB NOT NULL,
    item_values BLOB NOT NULL,
    PRIMARY KEY (run_id, generation, idx, task)
);
CREATE TABLE IF NOT EXISTS pareto (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    generation INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (run_id, generation, idx)
);
"""


@dataclass(frozen=True)
class CandidateRecord:
    """One finished evaluation, as stored."""

    generation: int
    idx: int
    kind: str
    label: str | None
    genotype: list[float] | None
    merge_config: str | None
    results: dict[str, Any] | None
    score: float | None
    status: str
    error: str | None
    t_merge: float | None = None
    t_eval: float | None = None
    t_total: float | None = None
    worker: str | None = None
    raw_score: float | None = None
    kinship: float | None = None
    # {"task/metric": {"ids": [...], "values": [...]}}: written with the record, read back
    # with `RunStorage.items` (not by `candidates`, which stays light).
    items: dict[str, dict[str, list]] | None = None


class RunStorage(Ledger):
    """A SQLite ledger of runs, candidates, events and strategy checkpoints."""

    FILENAME = "llm_evo.sqlite"
    WHAT = "run ledger"
    RUNS = "runs"
    RUN_COLUMNS = ("id", "config_json", "config_hash", "seed", "status")
    SCHEMA = _TABLES

    # ---- runs ------------------------------------------------------------------------------
    def create_run(self, config_json: str, config_hash: str, seed: int,
                   versions: dict[str, str]) -> int:
        return self._create_run(config_json, config_hash, versions, seed=seed)

    def latest_run(self) -> dict[str, Any] | None:
        return self.run()

    def runs(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT r.id, r.created, r.config_hash, r.status, r.finished, "
            "(SELECT COUNT(*) FROM candidates c WHERE c.run_id = r.id), "
            "(SELECT MAX(raw_score) FROM candidates c WHERE c.run_id = r.id "
            "AND c.kind='candidate' AND c.status='ok'), "
            "(SELECT MAX(generation) FROM candidates c WHERE c.run_id = r.id) "
            "FROM runs r ORDER BY r.id"
        ).fetchall()
        keys = ("id", "created", "config_hash", "status", "finished", "evaluations",
                "best_score", "last_generation")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def summaries(self) -> list[dict[str, Any]]:
        rows = self.runs()
        for row in rows:
            # The raw task score, as best_config.yaml and the report choose the best (the
            # fitness in `score` may carry a kinship penalty).
            best = self.best(row["id"])
            row["best_score"] = best.raw_score if best is not None else None
        return rows

    # ---- candidates ------------------------------------------------------------------------
    def record(self, run_id: int, rec: CandidateRecord) -> None:
        """Write one finished evaluation, its per-item results included, in one transaction
        (idempotent per slot)."""
        slot = (run_id, rec.generation, rec.idx)
        with self.conn:  # autocommit connection: BEGIN makes the statements one commit
            self.conn.execute("BEGIN")
            self.conn.execute(
                "INSERT OR REPLACE INTO candidates (run_id, generation, idx, kind, label, "
                "genotype_json, merge_config, results_json, score, raw_score, kinship, "
                "status, error, t_merge, t_eval, t_total, worker, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *slot, rec.kind, rec.label,
                    json.dumps(rec.genotype) if rec.genotype is not None else None,
                    rec.merge_config,
                    json.dumps(rec.results) if rec.results is not None else None,
                    rec.score, rec.raw_score if rec.raw_score is not None else rec.score,
                    rec.kinship, rec.status, rec.error, rec.t_merge, rec.t_eval, rec.t_total,
                    rec.worker, time.time(),
                ),
            )
            self.conn.execute("DELETE FROM items WHERE run_id = ? AND generation = ? "
                              "AND idx = ?", slot)
            self.conn.executemany(
                "INSERT INTO items (run_id, generation, idx, task, doc_ids, item_values) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(*slot, task, array("q", v["ids"]).tobytes(),
                  array("d", v["values"]).tobytes())
                 for task, v in (rec.items or {}).items()])

    def items(self, run_id: int, task: str | None = None, generation: int | None = None
              ) -> dict[tuple[int, int], dict[str, dict[str, list]]]:
        """Per-item results by (generation, idx): {"task/metric": {"ids", "values"}}, each
        stored as packed int64 ids and float64 values (about 1.6 KB per 100 items); `task`
        and `generation` narrow the read."""
        sql = "SELECT generation, idx, task, doc_ids, item_values FROM items WHERE run_id = ?"
        params: list[Any] = [run_id]
        for column, value in (("task", task), ("generation", generation)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        out: dict[tuple[int, int], dict[str, dict[str, list]]] = {}
        for g, i, name, ids, values in self.conn.execute(sql, params):
            out.setdefault((g, i), {})[name] = {"ids": array("q", ids).tolist(),
                                                "values": array("d", values).tolist()}
        return out

    def candidates(self, run_id: int, generation: int | None = None,
                   kind: str | None = None) -> list[CandidateRecord]:
        sql = ("SELECT generation, idx, kind, label, genotype_json, merge_config, results_json, "
               "score, status, error, t_merge, t_eval, t_total, worker, raw_score, kinship "
               "FROM candidates WHERE run_id = ?")
        params: list[Any] = [run_id]
        if generation is not None:
            sql += " AND generation = ?"
            params.append(generation)
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self.conn.execute(sql + " ORDER BY generation, idx", params).fetchall()
        return [
            CandidateRecord(
                generation=r[0], idx=r[1], kind=r[2], label=r[3],
                genotype=json.loads(r[4]) if r[4] else None, merge_config=r[5],
                results=json.loads(r[6]) if r[6] else None, score=r[7], status=r[8],
                error=r[9], t_merge=r[10], t_eval=r[11], t_total=r[12], worker=r[13],
                raw_score=r[14], kinship=r[15],
            )
            for r in rows
        ]

    def best(self, run_id: int) -> CandidateRecord | None:
        """The best successful merge candidate by raw score (parents excluded)."""
        ok = [c for c in self.candidates(run_id, kind="candidate") if c.status == "ok"]
        return max(ok, key=lambda c: c.raw_score, default=None)

    # ---- the Pareto front (search.objective: pareto) ----------------------------------------
    def set_front(self, run_id: int, slots: list[tuple[int, int]], generation: int) -> None:
        """Replace the run's non-dominated set with `slots` ((generation, idx) of
        candidates), in one transaction; members already on it keep their `since`."""
        since = dict(((g, i), s) for g, i, s in self.conn.execute(
            "SELECT generation, idx, since FROM pareto WHERE run_id = ?", (run_id,)))
        with self.conn:  # autocommit connection: BEGIN makes the two statements one commit
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM pareto WHERE run_id = ?", (run_id,))
            self.conn.executemany(
                "INSERT INTO pareto (run_id, generation, idx, since) VALUES (?, ?, ?, ?)",
                [(run_id, g, i, since.get((g, i), generation)) for g, i in slots])

    def front(self, run_id: int) -> list[CandidateRecord]:
        """The run's current non-dominated candidates, in (generation, idx) order."""
        slots = set(self.conn.execute(
            "SELECT generation, idx FROM pareto WHERE run_id = ?", (run_id,)).fetchall())
        return [c for c in self.candidates(run_id) if (c.generation, c.idx) in slots]

    # ---- events and checkpoints ------------------------------------------------------------
    def add_events(self, run_id: int, events: list[dict[str, Any]]) -> None:
        now = time.time()
        self._tx_many(
            "INSERT INTO events (run_id, generation, kind, payload_json, created) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                (run_id, e.get("generation"), e["kind"],
                 json.dumps({k: v for k, v in e.items() if k not in ("kind", "generation")},
                            default=str), now)
                for e in events
            ],
        )

    def events(self, run_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT generation, kind, payload_json FROM events WHERE run_id = ?"
        params: list[Any] = [run_id]
        if kind is not None:
            sql += " AND kind = ?"
            params.append(kind)
        rows = self.conn.execute(sql + " ORDER BY id", params).fetchall()
        return [{"generation": g, "kind": k, **json.loads(p)} for g, k, p in rows]

    PHASES = ("asked", "told")

    def save_checkpoint(self, run_id: int, generation: int, state: dict[str, Any],
                        phase: str = "told") -> None:
        """Strategy state after `ask` (its pending genotypes) or after `tell` of a generation.

        Saving after ask too means a resumed generation re-proposes exactly the genotypes
        whose finished evaluations are already recorded, even for a non-deterministic
        strategy such as an LLM.
        """
        step = 2 * generation + self.PHASES.index(phase)
        self._tx(
            "INSERT OR REPLACE INTO checkpoints (run_id, step, generation, phase, state_json, "
            "created) VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, step, generation, phase, json.dumps(state), time.time()),
        )

    def latest_checkpoint(self, run_id: int) -> tuple[int, str, dict[str, Any]] | None:
        """(generation, phase, state) of the newest checkpoint, or None."""
        row = self.conn.execute(
            "SELECT generation, phase, state_json FROM checkpoints WHERE run_id = ? "
            "ORDER BY step DESC LIMIT 1", (run_id,)
        ).fetchone()
        return (row[0], row[1], json.loads(row[2])) if row else None
