"""`llm-evo run CONFIG`: the evolutionary merge search.

Every flag of mergekit-evolve's `evolve.py` (mergekit 0.1.5) and of LLM-Evo-Merge's
`llm_evolve.py` is accepted with its meaning, so their command lines run unchanged; where a
default differs on purpose, the README's compatibility table says why. How flags combine
with the config is decided in `llm_evo.cli.run_flags`.
"""

from __future__ import annotations

import sys
from typing import Any

import click


@click.command()
@click.argument("config_path", metavar="CONFIG")
@click.option("--storage-path", required=True, help="Folder for the run ledger, merges, results.")
@click.option("--search", "search_strategy", default=None,
              help="Search strategy: cma, random, llm, tpe, gp or nsga2 (config: "
                   "search.strategy; an LLM flag such as --llm-model implies llm).")
@click.option("--objective", "search_objective", type=click.Choice(["weighted", "pareto"]),
              default=None, help="weighted: one weighted task score; pareto: every task an "
                                 "objective (config: search.objective).")
@click.option("--strategy", "-s", "scheduling",
              type=click.Choice(["pool", "buffered", "serial"]), default="pool",
              show_default=True, help="How evaluations are scheduled on Ray.")
@click.option("--max-fevals", type=click.IntRange(1), default=None,
              help="Budget of candidate evaluations: the run stops after the generation "
                   "that reaches it (config: search.max_fevals).")
@click.option("--max-generation", type=click.IntRange(1), default=None,
              help="At most this many generations (config: search.max_generations).")
@click.option("--force-population-size", type=click.IntRange(2), default=None,
              help="Candidates per generation (config: search.population_size).")
@click.option("--sigma0", type=click.FloatRange(0, min_open=True), default=None,
              help="CMA-ES's initial step size (config: search.sigma0).")
@click.option("--random-seed", type=int, default=None,
              help="Seeds the search, the example subset and every merge (DARE's masks) "
                   "(config: search.seed).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds of search: no generation starts after them.")
@click.option("--ray-address", default=None,
              help="Ray cluster to join (default: RAY_ADDRESS, else a live head that `ray start` "
                   "recorded on this machine, else a private local cluster; `local` always "
                   "starts a private one).")
@click.option("--num-workers", type=click.IntRange(1), default=None,
              help="CPU workers when there is no GPU (default: CPUs, at most 4).")
@click.option("--num-gpus", type=click.IntRange(0), default=None,
              help="Use at most this many GPUs.")
@click.option("--gpus-per-worker", type=click.IntRange(1), default=None,
              help="GPUs each worker (and so each candidate) reserves, for models larger than "
                   "one GPU (config: evaluation.gpus_per_worker; default 1).")
@click.option("--merge-cuda/--no-merge-cuda", default=True, show_default=True,
              help="Merge on the worker's GPU when it has one.")
@click.option("--trust-remote-code/--no-trust-remote-code", default=False, show_default=True)
@click.option("--allow-crimes/--no-allow-crimes", default=False, show_default=True,
              help="Allow merging models of different architectures (mergekit).")
@click.option("--batch-size", default=None, help="lm-eval batch size, an integer or 'auto'.")
@click.option("--task-search-path", multiple=True, help="Folder of lm-eval task YAMLs (repeat).")
@click.option("--i-understand-the-depths-of-the-evils-i-am-unleashing", "allow_benchmarks",
              is_flag=True, default=False, help="Allow common benchmarks as objectives.")
@click.option("--save-final-model/--no-save-final-model", default=True, show_default=True,
              help="Merge the best config into STORAGE/final_model at the end.")
@click.option("--in-memory/--no-in-memory", default=None,
              help="Merge into a resident model per worker, no disk I/O "
                   "(config: evaluation.in_memory; default off).")
@click.option("--vllm/--no-vllm", "use_vllm", default=None,
              help="Score with vLLM, an optional install (config: evaluation.backend).")
@click.option("--reshard/--no-reshard", default=None,
              help="Copy input models once into STORAGE/input_models as safetensors shards "
                   "(config: evaluation.reshard; default off).")
@click.option("--load-in-8bit", is_flag=True, default=False,
              help="Score merges at 8-bit precision (bitsandbytes).")
@click.option("--load-in-4bit", is_flag=True, default=False,
              help="Score merges at 4-bit precision (bitsandbytes, nf4).")
@click.option("--llm-model", default=None,
              help="Chat model for --search llm (default with OpenAI's endpoint: gpt-4o).")
@click.option("--llm-base-url", default=None,
              help="OpenAI-compatible server for --search llm (or OPENAI_BASE_URL; "
                   "default: OpenAI's).")
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
@click.option("--wandb-project", default=None,
              help="W&B project (else config wandb.project, else WANDB_PROJECT, else llm-evo).")
@click.option("--wandb-entity", default=None)
@click.option("--quiet", is_flag=True, default=False, help="No progress bars.")
@click.option("--verbose", is_flag=True, default=False, help="Log at INFO level.")
def run(config_path: str, **flags: Any) -> None:
    """Search merge weights for CONFIG (a mergekit-evolve genome YAML)."""
    from pathlib import Path

    from llm_evo.cli.common import setup_logging
    from llm_evo.cli.run_flags import (
        apply_budget,
        check_quantization,
        check_reshard,
        load_run_config,
        secret_kwargs,
    )
    from llm_evo.report.progress import progress_factory
    from llm_evo.report.summary import summary_text
    from llm_evo.resolve import build_genome, check_benchmarks, task_search_paths
    from llm_evo.session.options import RunOptions
    from llm_evo.session.search_loop import SearchLoop
    from llm_evo.strategies import check_strategy

    config, config_dir, notes = load_run_config(config_path, flags)
    storage_path = flags["storage_path"]
    setup_logging(flags["verbose"], Path(storage_path) / "run.log")
    for note in notes:
        click.echo(note, err=True)
    check_quantization(config)  # one line and exit 2 before anything slow
    check_strategy(config)  # an unknown strategy, or pareto asked of one that cannot
    for warning in check_benchmarks(config, flags["allow_benchmarks"]):
        click.echo(f"warning: {warning}", err=True)
    genome = build_genome(config, config_dir, flags["trust_remote_code"])
    config = apply_budget(config, config_path, flags, genome)
    check_reshard(config, genome)
    task_search_paths(config, flags["task_search_path"], config_dir)  # fail before Ray
    if config.evaluation.backend == "vllm" and not flags["ray_address"]:
        from llm_evo.evaluation.vllm_backend import require_vllm

        require_vllm()  # a missing vLLM is one clear error now, not one per worker later
    options = RunOptions(
        storage_path=storage_path,
        ray_address=flags["ray_address"],
        num_workers=flags["num_workers"],
        num_gpus=flags["num_gpus"],
        merge_cuda=flags["merge_cuda"],
        trust_remote_code=flags["trust_remote_code"],
        allow_crimes=flags["allow_crimes"],
        task_search_paths=flags["task_search_path"],
        config_dir=str(config_dir),
        save_final_model=flags["save_final_model"],
        scheduling=flags["scheduling"],
        strategy_kwargs=(secret_kwargs(flags["api_key"]) if config.search.strategy == "llm"
                         else {}),
        quiet=flags["quiet"],
        resume=flags["resume"],
        force_new_run=flags["force_new_run"],
        timeout=flags["timeout"],
    )
    loop = SearchLoop(config, genome, options, echo=lambda m: click.echo(m, err=True),
                      progress=progress_factory(sys.stderr, quiet=flags["quiet"]))
    try:
        summary = loop.run()
    except KeyboardInterrupt:
        click.echo("interrupted: finished evaluations are recorded; run the same command "
                   "again to resume", err=True)
        sys.exit(130)
    click.echo(summary_text(summary, config))
    used, asked = summary.llm_usage or (None, 0)
    if used == 0 and asked > 0:  # the search ran, but never as the LLM-guided search asked for
        click.echo(f"error: the LLM strategy produced no usable proposal in {asked} "
                   "generation(s): every generation fell back to the best genome (see "
                   f"{Path(storage_path) / 'run.log'}); results are kept, check the server, "
                   "--llm-base-url and --llm-model", err=True)
        sys.exit(1)
