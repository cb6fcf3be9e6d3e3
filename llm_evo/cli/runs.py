"""`llm-evo runs STORAGE_PATH`: the runs in a ledger, one line each."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None else "-"


@click.command()
@click.argument("storage_path", metavar="STORAGE_PATH")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print the runs as a JSON list instead of a table.")
def runs(storage_path: str, as_json: bool) -> None:
    """List the runs stored under STORAGE_PATH (id, created, status, evaluations, best)."""
    from llm_evo.pool.lineage import PoolLedger
    from llm_evo.report import open_storage

    root = Path(storage_path)
    if PoolLedger.exists_in(root) and not (root / "llm_evo.sqlite").is_file():
        _pool_runs(storage_path, as_json)
        return

    storage = open_storage(storage_path)
    try:
        rows = storage.runs()
        for row in rows:
            # The raw task score, as best_config.yaml and the report choose the best (the
            # ledger's MAX(score) would be the fitness after any kinship penalty).
            best = storage.best(row["id"])
            row["best_score"] = best.raw_score if best is not None else None
    finally:
        storage.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"{storage_path}: no runs yet")
        return
    header = f"{'id':>4}  {'created':<19}  {'status':<11}  {'evals':>5}  {'best':>8}  last gen"
    click.echo(header)
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        last = r["last_generation"]
        # generations are 1-based on screen, as `llm-evo run` prints them; -1 = parents only
        last_gen = str(last + 1) if last is not None and last >= 0 else "-"
        click.echo(f"{r['id']:>4}  {created:<19}  {r['status']:<11}  {r['evaluations']:>5}  "
                   f"{_fmt(r['best_score']):>8}  {last_gen}")


def _pool_runs(storage_path: str, as_json: bool) -> None:
    """The same listing for an `llm-evo pool` ledger (rounds instead of generations)."""
    from llm_evo.pool.lineage import PoolLedger

    ledger = PoolLedger(storage_path)
    try:
        rows = []
        for run in ledger.runs():
            models = ledger.models(run["id"])
            scored = [m for m in models if m.status in ("ok", "failed")]
            scores = [m.score for m in models if m.status == "ok" and m.score is not None]
            rows.append({"id": run["id"], "created": run["created"], "status": run["status"],
                         "stop_reason": run["stop_reason"], "evaluations": len(scored),
                         "best_score": max(scores) if scores else None,
                         "rounds": max((m.round for m in models), default=0)})
    finally:
        ledger.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'id':>4}  {'created':<19}  {'status':<11}  {'evals':>5}  {'best':>8}  "
               "rounds  stopped")
    for r in rows:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["created"]))
        click.echo(f"{r['id']:>4}  {created:<19}  {r['status']:<11}  {r['evaluations']:>5}  "
                   f"{_fmt(r['best_score']):>8}  {r['rounds']:>6}  {r['stop_reason'] or '-'}")
