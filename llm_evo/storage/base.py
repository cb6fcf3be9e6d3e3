"""What every llm-evo ledger shares: one SQLite file in the storage folder, opened the same way,
written one transaction at a time, starting with a table of runs.

A ledger kind (`RunStorage`, `PoolLedger`) names its file, its runs table and its own tables;
the connection (WAL, so readers such as `llm-evo runs` never block a running search), the
transaction helper and the runs-table reads and writes live here once. `open_ledger` is the
only place that knows which file means which kind: callers give a storage folder (or a
ledger file) and get the right ledger back, or one ConfigError line.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, ClassVar, TypeVar, overload

from llm_evo.errors import ConfigError

# A run in one of these states has ended: its `finished` time is set.
ENDED = ("finished", "failed", "interrupted")


def transaction(conn: sqlite3.Connection, sql: str, params: tuple = ()) -> sqlite3.Cursor:
    """One statement in its own transaction (autocommit connections), committed on return:
    a crash right after leaves it either recorded or absent, never half-written."""
    with conn:
        conn.execute("BEGIN")
        return conn.execute(sql, params)


def runs_table(name: str, *extra: str) -> str:
    """The runs table every ledger starts with: the config a run was started with, its
    identity hash and library versions, its status and when it ended; `extra` adds the
    kind's own columns (a run's seed, a pool run's stop reason)."""
    columns = ["id INTEGER PRIMARY KEY", "created REAL NOT NULL", "config_json TEXT NOT NULL",
               "config_hash TEXT NOT NULL", "versions_json TEXT NOT NULL",
               "status TEXT NOT NULL DEFAULT 'running'", "finished REAL", *extra]
    body = ",\n    ".join(columns)
    return f"CREATE TABLE IF NOT EXISTS {name} (\n    {body}\n);\n"


class Ledger:
    """One SQLite ledger file in a storage folder (created if absent, as a run starts)."""

    FILENAME: ClassVar[str]  # the file in the storage folder
    WHAT: ClassVar[str]  # for messages: "run ledger", "pool ledger"
    RUNS: ClassVar[str]  # the runs table (see `runs_table`)
    RUN_COLUMNS: ClassVar[tuple[str, ...]]  # what `run()` returns of a run
    SCHEMA: ClassVar[str]  # every table of the kind, its runs table included

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / self.FILENAME
        self.conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a killed process loses no committed transaction, and commits are cheap.
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(self.SCHEMA)

    @classmethod
    def exists_in(cls, root: str | Path) -> bool:
        return (Path(root) / cls.FILENAME).is_file()

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tx(self, sql: str, params: tuple = ()) -> sqlite3.Cursor:
        return transaction(self.conn, sql, params)

    def _tx_many(self, sql: str, rows: list[tuple]) -> None:
        """Many rows of one statement in one transaction (all recorded, or none)."""
        if not rows:
            return
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(sql, rows)

    # ---- runs ------------------------------------------------------------------------------
    def _create_run(self, config_json: str, config_hash: str, versions: dict[str, str],
                    **extra: Any) -> int:
        cols = ("created", "config_json", "config_hash", "versions_json", *extra)
        marks = ", ".join("?" * len(cols))
        cur = self._tx(f"INSERT INTO {self.RUNS} ({', '.join(cols)}) VALUES ({marks})",
                       (time.time(), config_json, config_hash, json.dumps(versions),
                        *extra.values()))
        return int(cur.lastrowid)

    def set_status(self, run_id: int, status: str, **extra: Any) -> None:
        """A run's status (and the kind's own columns in `extra`); an ended run gets its
        finish time, a running one (resumed) loses it."""
        finished = time.time() if status in ENDED else None
        sets = ", ".join(f"{c} = ?" for c in ("status", "finished", *extra))
        self._tx(f"UPDATE {self.RUNS} SET {sets} WHERE id = ?",
                 (status, finished, *extra.values(), run_id))

    def _run_rows(self, columns: tuple[str, ...], tail: str = "ORDER BY id",
                  params: tuple = ()) -> list[dict[str, Any]]:
        rows = self.conn.execute(f"SELECT {', '.join(columns)} FROM {self.RUNS} {tail}",
                                 params).fetchall()
        return [dict(zip(columns, r, strict=True)) for r in rows]

    def run(self, run_id: int | None = None) -> dict[str, Any] | None:
        """A run by id (default: the latest), as `RUN_COLUMNS`; None if there is none."""
        rows = (self._run_rows(self.RUN_COLUMNS, "ORDER BY id DESC LIMIT 1") if run_id is None
                else self._run_rows(self.RUN_COLUMNS, "WHERE id = ?", (run_id,)))
        return rows[0] if rows else None

    def summaries(self) -> list[dict[str, Any]]:
        """One row per run for `llm-evo runs`: id, created, status, evaluations, best_score
        and the kind's own progress fields."""
        raise NotImplementedError


L = TypeVar("L", bound=Ledger)


def ledger_kinds() -> tuple[type[Ledger], ...]:
    """Every ledger kind, in the order a folder holding several is opened (the run ledger
    first, as before the two shared a package)."""
    from llm_evo.storage.pool import PoolLedger
    from llm_evo.storage.run import RunStorage

    return (RunStorage, PoolLedger)


def _locate(path: str | Path) -> tuple[Path, list[type[Ledger]]]:
    """(storage folder, the ledger kinds it holds in opening order); a ledger file's path
    stands for that one ledger in its folder."""
    path = Path(path)
    named = [k for k in ledger_kinds() if path.name == k.FILENAME]
    if named and path.is_file():
        return path.parent, named
    if not path.exists():
        raise ConfigError(f"{path}: no such storage folder")
    if not path.is_dir():
        raise ConfigError(f"{path}: not a storage folder (give the --storage-path of a run)")
    return path, [k for k in ledger_kinds() if k.exists_in(path)]


def held_ledgers(path: str | Path) -> list[type[Ledger]]:
    """The ledger kinds a storage folder (or ledger file) holds, in opening order; none for
    a path that is not a storage folder. Reads no database."""
    try:
        return _locate(path)[1]
    except ConfigError:
        return []


@overload
def open_ledger(path: str | Path, kind: type[L]) -> L: ...
@overload
def open_ledger(path: str | Path, kind: None = None) -> Ledger: ...


def open_ledger(path: str | Path, kind: type[Ledger] | None = None) -> Ledger:
    """The existing ledger at `path`, a storage folder or a ledger file; never creates one.

    Without `kind`, whichever ledger the folder holds: a run ledger, else a pool ledger (a
    folder holding both opens its run ledger; give the pool ledger's file to open that).
    With `kind`, that kind or nothing. A missing folder, a folder without the ledger and a
    file that is not a readable SQLite ledger are each one ConfigError line.
    """
    root, held = _locate(path)
    if kind is not None:
        if kind not in held:
            raise ConfigError(f"{root}: no {kind.WHAT} ({kind.FILENAME}) in this folder")
        chosen: type[Ledger] = kind
    elif held:
        chosen = held[0]
    else:
        files = " or ".join(k.FILENAME for k in ledger_kinds())
        raise ConfigError(f"{root}: no llm-evo ledger ({files}) in this folder")
    ledger: Ledger | None = None
    try:
        ledger = chosen(root)
        ledger.run()
    except sqlite3.DatabaseError as exc:
        if ledger is not None:
            ledger.close()
        raise ConfigError(
            f"{root / chosen.FILENAME}: not a readable llm-evo ledger ({exc})") from None
    return ledger
