"""`llm-evo runs STORAGE_PATH`: the runs in a ledger, one line each."""

from __future__ import annotations

import json
import time

import click


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return format(value, spec) if value is not None else "-"


@click.command()
@click.argument("storage_path", metavar="STORAGE_PATH")
@click.option("--json", "as_json", is_flag=True, default=False,
              help="Print the runs as a JSON list instead of a table.")
def runs(storage_path: str, as_json: bool) -> None:
    """List the runs stored under STORAGE_PATH (id, created, status, evaluations, best)."""
    from llm_evo.report import open_storage

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
