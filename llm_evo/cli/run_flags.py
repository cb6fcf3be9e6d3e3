"""How `llm-evo run`'s flags combine with the config, decided in one place.

Why a module of its own: mergekit-evolve's and LLM-Evo-Merge's command lines must run
unchanged, and a few of their flags mean more than a config override:

- flags beat the config, the config beats environment variables, those beat defaults
  (`--wandb-project` > `wandb.project` > WANDB_PROJECT > "llm-evo");
- an LLM flag (`--llm-model`, `--api-key`, ...) selects `--search llm` when no strategy was
  chosen (LLM-Evo-Merge has no other strategy), and is refused against an explicit other one;
  likewise `--sigma0`, pycma's step size, selects `--search cma` (mergekit-evolve's only
  strategy) now that the default strategy is another;
- `--max-fevals` is a budget of candidate evaluations: generations = ceil(budget /
  population), capped by `--max-generation` / `search.max_generations` only when given;
- `--load-in-8bit/4bit` become mergekit-evolve's BitsAndBytesConfig in the HF backend's
  model_args, and need bitsandbytes, the HF backend and on-disk evaluation.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import click

from llm_evo.config import RunConfig, load_config, read_yaml, with_overrides
from llm_evo.errors import ConfigError

# Flags that only the LLM strategy reads.
LLM_FLAGS = ("llm_model", "llm_base_url", "api_key", "max_retries", "sigma_low", "sigma_high",
             "top_k", "llm_temperature")
# Flags that only one strategy reads: given without a strategy, they choose it.
STRATEGY_FLAGS = {"llm": LLM_FLAGS, "cma": ("sigma0",)}
DEFAULT_WANDB_PROJECT = "llm-evo"
# mergekit-evolve's BitsAndBytesConfig (mergekit/scripts/evolve.py), as JSON.
BNB_4BIT = {"bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_use_double_quant": True}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def explicit_search(config_path: str) -> dict[str, Any]:
    """The `search:` keys the config file itself sets (not schema defaults)."""
    data = read_yaml(config_path)
    search = data.get("search") if isinstance(data, dict) else None
    return search if isinstance(search, dict) else {}


def implied_strategy(flags: dict[str, Any], file_search: dict[str, Any]) -> tuple[str | None,
                                                                                  str | None]:
    """(strategy to set, note to print) for the strategy-specific flags given (LLM flags,
    --sigma0); ConfigError when they contradict a strategy chosen explicitly (by --search or
    search.strategy) or each other."""
    given = [(name, k) for name, keys in STRATEGY_FLAGS.items() for k in keys
             if flags.get(k) is not None]
    if not given:
        return None, None
    owners = list(dict.fromkeys(name for name, _ in given))
    if len(owners) > 1:
        first = {name: k for name, k in reversed(given)}
        raise ConfigError(f"{flag_name(first[owners[0]])} is a setting of the {owners[0]} "
                          f"strategy and {flag_name(first[owners[1]])} one of {owners[1]}: "
                          "choose one strategy")
    owner, key = given[0]
    chosen, source = flags.get("search_strategy"), "--search"
    if chosen is None and file_search.get("strategy") is not None:
        chosen, source = str(file_search["strategy"]), "search.strategy in the config"
    if chosen is None:
        return owner, f"search: {owner} (implied by {flag_name(key)})"
    if chosen != owner:
        raise ConfigError(f"{flag_name(key)} is a setting of the {owner} strategy, but the "
                          f"search strategy is {chosen} ({source}); pass --search {owner} or "
                          f"drop {flag_name(key)}")
    return None, None


def wandb_project(flags: dict[str, Any], config: RunConfig) -> str:
    """--wandb-project, else the config's wandb.project, else WANDB_PROJECT, else ours."""
    return (flags.get("wandb_project") or config.wandb.project
            or os.environ.get("WANDB_PROJECT") or DEFAULT_WANDB_PROJECT)


def quantization(flags: dict[str, Any]) -> dict[str, Any] | None:
    """The BitsAndBytesConfig fields for --load-in-8bit / --load-in-4bit, or None."""
    eight, four = flags.get("load_in_8bit"), flags.get("load_in_4bit")
    if eight and four:
        raise ConfigError("--load-in-8bit and --load-in-4bit: choose one")
    if not (eight or four):
        return None
    return {"load_in_8bit": bool(eight), "load_in_4bit": bool(four), **(BNB_4BIT if four else {})}


def batch_size(value: str | None) -> int | str | None:
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter("an integer or 'auto'", param_hint="--batch-size") from None


def load_run_config(config_path: str, flags: dict[str, Any]) -> tuple[RunConfig, Path,
                                                                       list[str]]:
    """The config with every flag applied, its folder, and notes to print."""
    config = load_config(config_path)
    implied, note = implied_strategy(flags, explicit_search(config_path))
    overrides: dict[str, Any] = {
        "search.strategy": flags.get("search_strategy") or implied,
        "search.objective": flags.get("search_objective"),
        "search.seed": flags.get("random_seed"),
        "search.population_size": flags.get("force_population_size"),
        "search.max_generations": flags.get("max_generation"),
        "search.max_fevals": flags.get("max_fevals"),
        "search.sigma0": flags.get("sigma0"),
        "search.sigma_low": flags.get("sigma_low"),
        "search.sigma_high": flags.get("sigma_high"),
        "evaluation.batch_size": batch_size(flags.get("batch_size")),
        "evaluation.in_memory": flags.get("in_memory"),
        "evaluation.backend": {True: "vllm", False: "hf"}.get(flags.get("use_vllm")),
        "evaluation.reshard": flags.get("reshard"),
        "evaluation.gpus_per_worker": flags.get("gpus_per_worker"),
        "evaluation.model_args.quantization_config": quantization(flags),
        "llm.model": flags.get("llm_model"),
        "llm.base_url": flags.get("llm_base_url"),
        "llm.max_retries": flags.get("max_retries"),
        "llm.top_k": flags.get("top_k"),
        "llm.temperature": flags.get("llm_temperature"),
        "wandb.enabled": flags.get("use_wandb"),
        "wandb.project": wandb_project(flags, config),
        "wandb.entity": flags.get("wandb_entity"),
    }
    config = with_overrides(config, overrides)
    return config, Path(config_path).resolve().parent, [note] if note else []


def check_quantization(config: RunConfig) -> None:
    """mergekit-evolve's rules for 8/4-bit scoring, each one line (exit 2)."""
    quant = config.evaluation.model_args.get("quantization_config")
    if not quant:
        return
    flag = "--load-in-4bit" if quant.get("load_in_4bit") else "--load-in-8bit"
    if config.evaluation.backend == "vllm":
        raise ConfigError(f"{flag} works with the HF backend only, not --vllm")
    if config.evaluation.in_memory:
        raise ConfigError(f"{flag} cannot be combined with --in-memory")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{flag} needs bitsandbytes, which is not installed "
                          "(pip install bitsandbytes)")


def check_reshard(config: RunConfig, genome: Any) -> None:
    """--reshard copies plain models; a `model+lora` reference is refused up front (the
    workers would fail on it), where mergekit-evolve merges the adapter first."""
    if not config.evaluation.reshard:
        return
    from llm_evo.model_ref import parse_model_ref

    refs = [*genome.models, *([genome.base_model] if genome.base_model else [])]
    for i, ref in enumerate(refs):
        if parse_model_ref(ref).lora:
            field = f"genome.models[{i}]" if i < len(genome.models) else "genome.base_model"
            raise ConfigError(f"{field}: --reshard does not copy a model with a LoRA "
                              f"({ref}); pass --no-reshard")


def apply_budget(config: RunConfig, config_path: str, flags: dict[str, Any],
                 genome: Any) -> RunConfig:
    """With a --max-fevals budget and no generation count given, the generation count is
    the budget's: ceil(max_fevals / population). (An explicit count still caps it; the
    search loop stops at whichever comes first.)"""
    s = config.search
    if s.max_fevals is None or flags.get("max_generation") is not None:
        return config
    if "max_generations" in explicit_search(config_path):
        return config
    from llm_evo.strategies import default_population_size

    population = s.population_size or default_population_size(genome.n_genes)
    return with_overrides(config, {
        "search.max_generations": math.ceil(s.max_fevals / population)})


def secret_kwargs(api_key: str | None) -> dict[str, Any]:
    """The API key (and OPENAI_BASE_URL, which llm.base_url beats) go straight to the
    strategy object, never into config or storage; the strategy reads no environment."""
    key = api_key or os.environ.get("OPENAI_API_KEY")
    url = os.environ.get("OPENAI_BASE_URL")
    return {k: v for k, v in (("api_key", key), ("base_url", url)) if v}
