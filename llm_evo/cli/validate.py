"""`llm-evo validate CONFIG`: every check a run would make, without running."""

from __future__ import annotations

import click

from llm_evo.cli.common import load_with_overrides


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
    from llm_evo.genome import describe_axes
    from llm_evo.resolve import (
        build_genome,
        check_benchmarks,
        check_tasks,
        make_task_manager,
        task_search_paths,
    )

    if _is_pool_config(config_path):
        _validate_pool(config_path, task_search_path, skip_tasks)
        return
    config, config_dir = load_with_overrides(config_path, {})
    for warning in check_benchmarks(config, allow_benchmarks):
        click.echo(f"warning: {warning}", err=True)
    genome = build_genome(config, config_dir, trust_remote_code)
    paths = task_search_paths(config, task_search_path, config_dir)
    if not skip_tasks:
        check_tasks(config, make_task_manager(paths, [t.name for t in config.tasks]))
    click.echo(f"{config_path}: OK")
    click.echo(describe_axes(genome))
    click.echo("axes:")
    for axis in genome.space.axes:
        where = "starts in" if not axis.bounded else "in"
        click.echo(f"  [{axis.index:3d}] {axis.label}  {where} [{axis.low:g}, {axis.high:g}]"
                   + ("" if axis.bounded else ", unbounded"))
    tasks = ", ".join(f"{t.name} ({t.metric} x {t.weight:g})" for t in config.tasks)
    click.echo(f"tasks: {tasks}")


def _is_pool_config(path: str) -> bool:
    """A pool config has `pool:` where a run config has `genome:` (see `llm-evo pool`)."""
    from pathlib import Path

    import yaml

    from llm_evo.pool.config import is_pool_config

    try:
        return is_pool_config(yaml.safe_load(Path(path).read_text()))
    except (OSError, yaml.YAMLError):
        return False  # the run config loader reports it, with the line


def _validate_pool(config_path: str, task_search_path: tuple[str, ...], skip_tasks: bool) -> None:
    from pathlib import Path

    from llm_evo.errors import ConfigError
    from llm_evo.genome import resolve_path
    from llm_evo.pool.config import load_pool_config
    from llm_evo.resolve import check_tasks, make_task_manager

    config = load_pool_config(config_path)
    config_dir = Path(config_path).resolve().parent
    section = config.pool
    for field, ref in [("pool.base_model", section.base_model),
                       *((f"pool.models[{i}]", m) for i, m in enumerate(section.models))]:
        path = Path(resolve_path(ref, config_dir))
        if not (path / "config.json").is_file():
            raise ConfigError(f"{config_path}: {field}: model folder not found: {ref}")
    if not skip_tasks:
        paths = [str(Path(resolve_path(p, config_dir)))
                 for p in [*config.evaluation.task_search_path, *task_search_path]]
        check_tasks(config, make_task_manager(paths, [t.name for t in config.tasks]))
    click.echo(f"{config_path}: OK (pool config)")
    click.echo(f"models: {len(section.models)}, top_k {section.top_k}, "
               f"{section.merge_method} t={section.t:g}, exploration "
               f"{'on' if section.exploration else 'off'}, kinship {section.kinship_metric}")
    tasks = ", ".join(f"{t.name} ({t.metric} x {t.weight:g})" for t in config.tasks)
    click.echo(f"tasks: {tasks}")
