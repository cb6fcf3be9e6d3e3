"""`llm-evo runs STORAGE_PATH`: the runs in a ledger, one line each.

The ledger (a run's or a pool's) says what its runs were; this module only lays the rows out:
the columns every ledger has, then the kind's own progress columns.
"""

from __future__ import annotations

import json
import time
from typing import Any

import click


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None else "-"


def _last_generation(row: dict[str, Any]) -> str:
    # generations are 1-based on screen, as `llm-evo run` prints them; -1 = parents only
    last = row["last_generation"]
    return str(last + 1) if last is not None and last >= 0 else "-"


# The kind's own columns: (header, the row's cell), after the columns every ledger has.
RUN_TAIL = (("last gen", _last_generation),)
POOL_TAIL = (("rounds", lambda r: f"{r['rounds']:>6}"),
             ("stopped", lambda r: r["stop_reason"] or "-"))


@click.command()
@click.argument("storage_path", metavar="STORAGE_PATH")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print the runs as a JSON list instead of a table.")
def runs(storage_path: str, as_json: bool) -> None:
    """List the runs stored under STORAGE_PATH (id, created, status, evaluations, best)."""
    from llm_evo.storage import PoolLedger, open_ledger

    with open_ledger(storage_path) as ledger:
        rows = ledger.summaries()
        tail = POOL_TAIL if isinstance(ledger, PoolLedger) else RUN_TAIL
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{storage_path}: no runs yet")
        return
    click.echo(f"{'id':>4}  {'created':<19}  {'status':<11}  {'evals':>5}  {'best':>8}  "
               + "  ".join(header for header, _ in tail))
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        click.echo(f"{r['id']:>4}  {created:<19}  {r['status']:<11}  {r['evaluations']:>5}  "
                   f"{_fmt(r['best_score']):>8}  " + "  ".join(cell(r) for _, cell in tail))
