"""`llm-evo report STORAGE_PATH`: plots and summary.md of a stored run."""

from __future__ import annotations

import click


@click.command()
@click.argument("storage_path", metavar="STORAGE_PATH")
@click.option("--run-id", type=click.IntRange(min=1), default=None,
              help="Which run in the ledger (default: the latest; see `llm-evo runs`).")
@click.option("--out", "out_dir", default=None, metavar="DIR",
              help="Folder for the PNGs and summary.md (default: STORAGE_PATH/report).")
def report(storage_path: str, run_id: int | None, out_dir: str | None) -> None:
    """Write score, genome, kinship and timing plots and summary.md for a stored run
    (for a `llm-evo pool` run: its family tree, rounds and summary.md)."""
    from llm_evo.storage import PoolLedger, open_ledger

    with open_ledger(storage_path) as ledger:  # which kind of run the folder holds
        is_pool = isinstance(ledger, PoolLedger)
    if is_pool:
        from llm_evo.report.pool import PLOTS, write_pool_report

        result = write_pool_report(storage_path, run_id=run_id, out_dir=out_dir)
    else:
        from llm_evo.report.run import PLOTS, write_report

        result = write_report(storage_path, run_id=run_id, out_dir=out_dir)
    click.echo(f"run {result.run_id}: report in {result.out_dir}")
    click.echo(f"  {result.summary.name}")
    width = max([14, *(len(p.name) + 2 for p in result.plots.values())])
    for name, path in result.plots.items():
        click.echo(f"  {path.name:<{width}}{PLOTS[name]}")
