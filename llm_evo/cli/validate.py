"""`llm-evo validate CONFIG`: every check a run would make, without running."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from llm_evo.config import PoolConfig, ScoringConfig


@click.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--task-search-path", multiple=True, help="Extra folder of lm-eval task YAMLs.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False)
@click.option("--i-understand-the-depths-of-the-evils-i-am-unleashing", "allow_benchmarks",
              is_flag=True, default=False, help="Allow common benchmarks as objectives.")
@click.option("--skip-tasks", is_flag=True, default=False,
              help="Skip resolving lm-eval tasks (the slow step).")
def validate(config_path: str, task_search_path: tuple[str, ...], trust_remote_code: bool,
             allow_benchmarks: bool, skip_tasks: bool) -> None:
    """Check CONFIG: models, architectures, layer groups, method needs and tasks."""
    from llm_evo.config import is_pool_config, parse_config, parse_pool_config, read_yaml
    from llm_evo.genome import describe_axes
    from llm_evo.resolve import build_genome, check_benchmarks, task_search_paths

    data = read_yaml(config_path)  # one read; a pool config has `pool:` where a run has genome:
    config_dir = Path(config_path).resolve().parent
    if is_pool_config(data):
        _validate_pool(parse_pool_config(data, config_path), config_path, config_dir,
                       task_search_path, skip_tasks)
        return
    config = parse_config(data, config_path)
    from llm_evo.strategies import check_strategy

    check_strategy(config)
    for warning in check_benchmarks(config, allow_benchmarks):
        click.echo(f"warning: {warning}", err=True)
    genome = build_genome(config, config_dir, trust_remote_code)
    paths = task_search_paths(config, task_search_path, config_dir)
    if not skip_tasks:
        _check_tasks(config, paths)
    click.echo(f"{config_path}: OK")
    click.echo(describe_axes(genome))
    click.echo("axes:")
    for axis in genome.space.axes:
        where = "starts in" if not axis.bounded else "in"
        click.echo(f"  [{axis.index:3d}] {axis.label}  {where} [{axis.low:g}, {axis.high:g}]"
                   + ("" if axis.bounded else ", unbounded"))
    _echo_tasks(config)
    screening = config.evaluation.screening
    if screening is not None:
        click.echo(f"screening: {screening.anchors} {screening.anchor_method} anchor item(s) "
                   f"per task first; the best {screening.promote:g} of each generation "
                   "scored on every item")


def _check_tasks(config: ScoringConfig, paths: list[str]) -> None:
    from llm_evo.resolve import check_tasks, make_task_manager

    check_tasks(config, make_task_manager(paths, [t.name for t in config.tasks]))


def _echo_tasks(config: ScoringConfig) -> None:
    tasks = ", ".join(f"{t.name} ({t.metric} x {t.weight:g})" for t in config.tasks)
    click.echo(f"tasks: {tasks}")


def _validate_pool(config: PoolConfig, config_path: str, config_dir: Path,
                   task_search_path: tuple[str, ...], skip_tasks: bool) -> None:
    from llm_evo.errors import ConfigError
    from llm_evo.genome import resolve_path
    from llm_evo.resolve import task_search_paths

    section = config.pool
    for field, ref in [("pool.base_model", section.base_model),
                       *((f"pool.models[{i}]", m) for i, m in enumerate(section.models))]:
        path = Path(resolve_path(ref, config_dir))
        if not (path / "config.json").is_file():
            raise ConfigError(f"{config_path}: {field}: model folder not found: {ref}")
    paths = task_search_paths(config, task_search_path, config_dir)
    if not skip_tasks:
        _check_tasks(config, paths)
    click.echo(f"{config_path}: OK (pool config)")
    click.echo(f"models: {len(section.models)}, top_k {section.top_k}, "
               f"{section.merge_method} t={section.t:g}, exploration "
               f"{'on' if section.exploration else 'off'}, kinship {section.kinship_metric}")
    _echo_tasks(config)
