"""`llm-evo run CONFIG`: the evolutionary merge search.

Flag names follow mergekit-evolve's so its users can keep their command lines.
"""

from __future__ import annotations

import os
import sys

import click


@click.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--storage-path", required=True, help="Folder for the run ledger, merges, results.")
@click.option("--search", "search_strategy", default=None,
              help="Search strategy: cma, random or llm (config: search.strategy).")
@click.option("--strategy", "scheduling", type=click.Choice(["pool", "buffered", "serial"]),
              default="pool", show_default=True, help="How evaluations are scheduled on Ray.")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of a local one.")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="CPU workers when there is no GPU (default: CPUs, at most 4).")
@click.option("--num-gpus", type=click.IntRange(0), default=None,
              help="Use at most this many GPUs.")
@click.option("--merge-cuda/--no-merge-cuda", default=True, show_default=True,
              help="Merge on the worker's GPU when it has one.")
@click.option("--trust-remote-code", is_flag=True, default=False)
@click.option("--allow-crimes", is_flag=True, default=False,
              help="Allow merging models of different architectures (mergekit).")
@click.option("--random-seed", type=int, default=None, help="Seed (config: search.seed).")
@click.option("--batch-size", default=None, help="lm-eval batch size, an integer or 'auto'.")
@click.option("--task-search-path", multiple=True, help="Folder of lm-eval task YAMLs (repeat).")
@click.option("--i-understand-the-depths-of-the-evils-i-am-unleashing", "allow_benchmarks",
              is_flag=True, default=False, help="Allow common benchmarks as objectives.")
@click.option("--save-final-model/--no-save-final-model", default=False, show_default=True,
              help="Merge the best config into STORAGE/final_model at the end.")
@click.option("--force-population-size", type=click.IntRange(2), default=None)
@click.option("--max-generation", type=click.IntRange(1), default=None)
@click.option("--llm-model", default=None, help="Chat model for --search llm.")
@click.option("--llm-base-url", default=None,
              help="OpenAI-compatible server for --search llm (or OPENAI_BASE_URL).")
@click.option("--api-key", default=None,
              help="API key for the LLM server (prefer the OPENAI_API_KEY variable).")
@click.option("--max-retries", type=click.IntRange(0), default=None)
@click.option("--sigma-low", type=float, default=None)
@click.option("--sigma-high", type=float, default=None)
@click.option("--top-k", type=click.IntRange(1), default=None)
@click.option("--llm-temperature", type=float, default=None)
@click.option("--resume", is_flag=True, default=False,
              help="Continue the run in STORAGE (automatic when its config is unchanged).")
@click.option("--force-new-run", is_flag=True, default=False,
              help="Start a new run even if STORAGE holds a run of another config.")
@click.option("--wandb/--no-wandb", "use_wandb", default=None,
              help="Log to Weights & Biases (config: wandb.enabled).")
@click.option("--wandb-project", default=None)
@click.option("--wandb-entity", default=None)
@click.option("--in-memory", is_flag=True, default=False,
              help="Merge into a resident model per worker, no disk I/O "
                   "(config: evaluation.in_memory).")
@click.option("--vllm", "use_vllm", is_flag=True, default=False,
              help="Score with vLLM, an optional install (config: evaluation.backend: vllm).")
@click.option("--reshard/--no-reshard", default=None,
              help="Copy input models once into STORAGE/input_models as safetensors shards "
                   "(config: evaluation.reshard; default off).")
@click.option("--quiet", is_flag=True, default=False, help="No progress bars.")
@click.option("--verbose", is_flag=True, default=False, help="Log at INFO level.")
def run(config_path: str, storage_path: str, search_strategy: str | None, scheduling: str,
        ray_address: str | None, num_workers: int | None, num_gpus: int | None,
        merge_cuda: bool, trust_remote_code: bool, allow_crimes: bool,
        random_seed: int | None, batch_size: str | None, task_search_path: tuple[str, ...],
        allow_benchmarks: bool, save_final_model: bool, force_population_size: int | None,
        max_generation: int | None, llm_model: str | None, llm_base_url: str | None,
        api_key: str | None, max_retries: int | None, sigma_low: float | None,
        sigma_high: float | None, top_k: int | None, llm_temperature: float | None,
        resume: bool, force_new_run: bool, use_wandb: bool | None,
        wandb_project: str | None, wandb_entity: str | None, in_memory: bool, use_vllm: bool,
        reshard: bool | None, quiet: bool, verbose: bool) -> None:
    """Search merge weights for CONFIG (a mergekit-evolve genome YAML)."""
    from pathlib import Path

    from llm_evo.cli.common import load_with_overrides, setup_logging
    from llm_evo.controller import Controller, RunOptions
    from llm_evo.report_text import summary_text
    from llm_evo.resolve import build_genome, check_benchmarks, task_search_paths

    config, config_dir = load_with_overrides(config_path, {
        "search.strategy": search_strategy,
        "search.seed": random_seed,
        "search.population_size": force_population_size,
        "search.max_generations": max_generation,
        "search.sigma_low": sigma_low,
        "search.sigma_high": sigma_high,
        "evaluation.batch_size": _batch_size(batch_size),
        "llm.model": llm_model,
        "llm.base_url": llm_base_url,
        "llm.max_retries": max_retries,
        "llm.top_k": top_k,
        "llm.temperature": llm_temperature,
        "wandb.enabled": use_wandb,
        "wandb.project": wandb_project,
        "wandb.entity": wandb_entity,
        "evaluation.in_memory": True if in_memory else None,
        "evaluation.backend": "vllm" if use_vllm else None,
        "evaluation.reshard": reshard,
    })
    setup_logging(verbose, Path(storage_path) / "run.log")
    for warning in check_benchmarks(config, allow_benchmarks):
        click.echo(f"warning: {warning}", err=True)
    genome = build_genome(config, config_dir, trust_remote_code)
    task_search_paths(config, task_search_path, config_dir)  # fail on a bad path before Ray
    if config.evaluation.backend == "vllm" and not ray_address:
        from llm_evo.evaluation.vllm_backend import require_vllm

        require_vllm()  # a missing vLLM is one clear error now, not one per worker later
    options = RunOptions(
        storage_path=storage_path,
        ray_address=ray_address,
        num_workers=num_workers,
        num_gpus=num_gpus,
        merge_cuda=merge_cuda,
        trust_remote_code=trust_remote_code,
        allow_crimes=allow_crimes,
        task_search_paths=task_search_path,
        config_dir=str(config_dir),
        save_final_model=save_final_model,
        scheduling=scheduling,
        strategy_kwargs=_secret_kwargs(api_key) if config.search.strategy == "llm" else {},
        quiet=quiet,
        resume=resume,
        force_new_run=force_new_run,
    )
    controller = Controller(config, genome, options, echo=lambda m: click.echo(m, err=True))
    try:
        summary = controller.run()
    except KeyboardInterrupt:
        click.echo("interrupted: finished evaluations are recorded; run the same command "
                   "again to resume", err=True)
        sys.exit(130)
    click.echo(summary_text(summary, config))


def _batch_size(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("an integer or 'auto'", param_hint="--batch-size") from None


def _secret_kwargs(api_key: str | None) -> dict:
    """The API key goes straight to the strategy object, never into config or storage."""
    key = api_key or os.environ.get("OPENAI_API_KEY")
    return {"api_key": key} if key else {}
