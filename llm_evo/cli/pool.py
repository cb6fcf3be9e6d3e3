"""`llm-evo pool CONFIG`: top-k greedy merging with model kinship (see docs/pool.md)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from llm_evo.session.pool_loop import PoolSummary


@click.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--storage-path", required=True,
              help="Folder for the lineage ledger and the pool's models.")
@click.option("--top-k", type=click.IntRange(2), default=None, help="Config: pool.top_k.")
@click.option("--exploration/--no-exploration", default=None,
              help="Merge the best with its least related model each round "
                   "(config: pool.exploration; off = plain greedy).")
@click.option("--merge-method", type=click.Choice(["slerp", "linear", "task_arithmetic"]),
              default=None, help="Config: pool.merge_method.")
@click.option("--t", "t", type=click.FloatRange(0, 1), default=None, help="Config: pool.t.")
@click.option("--kinship-metric", type=click.Choice(["pcc", "cs", "ed"]), default=None,
              help="Config: pool.kinship_metric.")
@click.option("--kinship-stop", type=float, default=None,
              help="Stop once the top-k's mean kinship passes this (config: pool.kinship_stop).")
@click.option("--max-rounds", type=click.IntRange(1), default=None)
@click.option("--max-evaluations", type=click.IntRange(1), default=None,
              help="Budget for the whole run, input models included.")
@click.option("--random-seed", type=int, default=None, help="Config: pool.seed.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="lm-eval examples per task (config: limit).")
@click.option("--task-search-path", multiple=True, help="Folder of lm-eval task YAMLs (repeat).")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="CPU workers when there is no GPU (default: CPUs, at most 4).")
@click.option("--num-gpus", type=click.IntRange(0), default=None)
@click.option("--ray-address", default=None,
              help="Ray cluster to join (default: RAY_ADDRESS, else a live head that `ray start` "
                   "recorded on this machine, else a private local cluster; `local` always "
                   "starts a private one).")
@click.option("--trust-remote-code", is_flag=True, default=False)
@click.option("--allow-crimes", is_flag=True, default=False)
@click.option("--force-new-run", is_flag=True, default=False,
              help="Start another pool run in a storage path that already holds one.")
@click.option("--quiet", is_flag=True, default=False, help="No progress bars.")
@click.option("--verbose", is_flag=True, default=False, help="Log at INFO level.")
def pool(config_path: str, storage_path: str, top_k: int | None, exploration: bool | None,
         merge_method: str | None, t: float | None, kinship_metric: str | None,
         kinship_stop: float | None, max_rounds: int | None, max_evaluations: int | None,
         random_seed: int | None, limit: int | None, task_search_path: tuple[str, ...],
         num_workers: int | None, num_gpus: int | None, ray_address: str | None,
         trust_remote_code: bool, allow_crimes: bool, force_new_run: bool, quiet: bool,
         verbose: bool) -> None:
    """Merge a pool of fine-tunes greedily: every pair, then the top-k, until it settles."""
    from pathlib import Path

    from llm_evo.cli.common import setup_logging
    from llm_evo.config import load_pool_config, with_overrides
    from llm_evo.report.progress import progress_factory
    from llm_evo.session.options import PoolOptions
    from llm_evo.session.pool_loop import PoolLoop

    config = with_overrides(load_pool_config(config_path), {
        "pool.top_k": top_k,
        "pool.exploration": exploration,
        "pool.merge_method": merge_method,
        "pool.t": t,
        "pool.kinship_metric": kinship_metric,
        "pool.kinship_stop": kinship_stop,
        "pool.max_rounds": max_rounds,
        "pool.max_evaluations": max_evaluations,
        "pool.seed": random_seed,
        "limit": limit,
    })
    setup_logging(verbose, Path(storage_path) / "pool.log")
    options = PoolOptions(
        storage_path=storage_path,
        ray_address=ray_address,
        num_workers=num_workers,
        num_gpus=num_gpus,
        task_search_paths=task_search_path,
        config_dir=str(Path(config_path).resolve().parent),
        trust_remote_code=trust_remote_code,
        allow_crimes=allow_crimes,
        quiet=quiet,
        force_new_run=force_new_run,
    )
    loop = PoolLoop(config, options, echo=lambda m: click.echo(m, err=True),
                    progress=progress_factory(sys.stderr, quiet=quiet))
    try:
        summary = loop.run()
    except KeyboardInterrupt:
        click.echo("interrupted: the lineage so far is recorded in the storage path", err=True)
        sys.exit(130)
    click.echo(describe(summary, config.pool.kinship_metric))


def describe(summary: PoolSummary, metric: str) -> str:
    """The end-of-run text on stdout."""
    lines = [f"pool run {summary.run_id}: stopped ({summary.stop_reason}) after round "
             f"{summary.rounds}, {summary.evaluations} evaluations ({summary.failed} failed), "
             f"{summary.elapsed:.0f} s"]
    for rec in summary.inputs:
        score = f"{rec.score:.4f}" if rec.score is not None else "failed"
        lines.append(f"  input {rec.name:<24} {score}")
    for i, rec in enumerate(summary.top_k):
        tag = "best" if i == 0 else f"top {i + 1}"
        parents = f" = {rec.parent_a} x {rec.parent_b}" if rec.parent_a else ""
        lines.append(f"  {tag:<6}{rec.name:<24} {rec.score:.4f}{parents}  {rec.path}")
    if summary.top_k_kinship is not None:
        lines.append(f"  top-k mean {metric}: {summary.top_k_kinship:.4f}")
    if summary.best is not None and summary.best.results:
        per_task = ", ".join(f"{k} {v:.4f}" for k, v in summary.best.results.items()
                             if isinstance(v, (int, float)))
        lines.append(f"  best per task: {per_task}")
    return "\n".join(lines)
