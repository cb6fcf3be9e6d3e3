"""Checks that need the outside world: do the models exist and agree, do the tasks resolve.

Kept apart from `config` (pure schema) because these read files, may touch the Hugging
Face cache and build lm-eval's TaskManager (10-30 s), which only `validate` and the
evaluation workers should pay for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llm_evo.config import RunConfig, ScoringConfig
from llm_evo.errors import ConfigError, InvalidGenotypeError
from llm_evo.genome import Genome, resolve_path
from llm_evo.model_ref import parse_model_ref

# Optimising straight against a public benchmark's test set games it; mergekit-evolve
# refuses these prefixes unless explicitly allowed, and so do we.
BENCHMARK_PREFIXES = (
    "mmlu", "hendrycks", "agieval", "gsm8k", "hellaswag", "winogrande", "arc_", "ai2_arc",
    "truthfulqa", "bigbench", "piqa", "openbookqa", "leaderboard",
)
BENCHMARK_FLAG = "--i-understand-the-depths-of-the-evils-i-am-unleashing"


@dataclass(frozen=True)
class ModelFacts:
    reference: str
    architecture: str
    num_layers: int
    vocab_size: int | None
    hidden_size: int | None = None


def read_model_config(reference: str, field: str, trust_remote_code: bool = False) -> ModelFacts:
    """Architecture and layer count of a local model dir or a hub id, or a ConfigError.

    `reference` may be any mergekit model reference: `path@revision` reads that revision's
    config, and `base+lora` the base's (a LoRA keeps its base's architecture), after
    checking that a local adapter folder exists."""
    try:
        ref = parse_model_ref(reference)
    except ValueError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    if ref.lora and (ref.lora.startswith((".", "/", "~")) or Path(ref.lora).exists()):
        if not (Path(ref.lora).expanduser() / "adapter_config.json").is_file():
            raise ConfigError(f"{field}: LoRA adapter {ref.lora} has no adapter_config.json")
    facts = _read_config(ref.path, ref.revision, field, trust_remote_code)
    return ModelFacts(reference, facts.architecture, facts.num_layers, facts.vocab_size,
                      facts.hidden_size)


def _read_config(reference: str, revision: str | None, field: str,
                 trust_remote_code: bool) -> ModelFacts:
    path = Path(reference)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"{field}: {reference} has no config.json")
        try:
            cfg = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{field}: cannot read {cfg_file}: {exc}") from None
    elif path.exists() or reference.startswith((".", "/", "~")) or reference.count("/") > 1:
        raise ConfigError(f"{field}: {reference} is not a model directory")
    else:
        cfg = _hub_config(reference, revision, field, trust_remote_code)
    archs = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer", cfg.get("num_layers")))
    if layers is None:
        raise ConfigError(f"{field}: {reference}'s config.json gives no num_hidden_layers")
    hidden = cfg.get("hidden_size", cfg.get("n_embd", cfg.get("d_model")))
    return ModelFacts(reference, archs[0], int(layers), cfg.get("vocab_size"),
                      int(hidden) if hidden is not None else None)


def _hub_config(reference: str, revision: str | None, field: str,
                trust_remote_code: bool) -> dict:
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(reference, revision=revision,
                                          trust_remote_code=trust_remote_code).to_dict()
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot resolve"
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"{field}: {reference} is not a local directory and could not be fetched from the "
            f"Hugging Face Hub ({reason})"
        ) from None


def build_genome(config: RunConfig, config_dir: Path | None = None,
                 trust_remote_code: bool = False) -> Genome:
    """Resolve every model, check they fit together, and build the Genome."""
    g = config.genome
    models = [resolve_path(m, config_dir) for m in g.models]
    if g.dataflow is not None:  # a previous run's storage stands for its best merge
        models = [run_best_model(m, f"genome.models[{i}]") for i, m in enumerate(models)]
    facts = [
        read_model_config(m, f"genome.models[{i}]", trust_remote_code)
        for i, m in enumerate(models)
    ]
    base = resolve_path(g.base_model, config_dir) if g.base_model else None
    if base is not None:
        facts.append(read_model_config(base, "genome.base_model", trust_remote_code))
    first = facts[0]
    for i, f in enumerate(facts[1:], start=1):
        field = "genome.base_model" if base is not None and i == len(facts) - 1 else (
            f"genome.models[{i}]")
        if f.architecture != first.architecture:
            raise ConfigError(
                f"{field}: architecture {f.architecture} differs from {first.architecture}"
            )
        if g.dataflow is not None and f.hidden_size != first.hidden_size:
            raise ConfigError(f"{field}: hidden size {f.hidden_size}, but {models[0]} has "
                              f"{first.hidden_size}: a data-flow path cannot pass hidden "
                              "states between them")
        if f.num_layers != first.num_layers:
            raise ConfigError(f"{field}: {f.num_layers} layers, but {models[0]} has "
                              f"{first.num_layers}")
    if g.layer_granularity and first.num_layers % g.layer_granularity:
        raise ConfigError(
            f"genome.layer_granularity: {g.layer_granularity} does not divide the "
            f"{first.num_layers} layers"
        )
    try:
        if g.dataflow is not None:
            from llm_evo.dataflow import DataFlowGenome

            return DataFlowGenome(g, models, first.num_layers)
        return Genome(g, models, base, first.num_layers)
    except InvalidGenotypeError as exc:
        raise ConfigError(str(exc)) from None


def run_best_model(reference: str, field: str) -> str:
    """A model reference, or, when it is a run's storage folder (PS -> DFS: a data-flow
    search over a parameter-space run's best merge), that run's `final_model`."""
    path = Path(reference)
    if not (path / "llm_evo.sqlite").is_file():
        return reference
    final = path / "final_model"
    if not (final / "config.json").is_file():
        raise ConfigError(
            f"{field}: {reference} is a run's storage without final_model/ (write it with "
            f"`mergekit-yaml {path / 'best_config.yaml'} {final}`)")
    return str(final)


def check_benchmarks(config: RunConfig, allow: bool) -> list[str]:
    """Refuse public benchmarks as objectives unless allowed; return warnings when allowed."""
    warnings = []
    for task in config.tasks:
        if task.name.startswith(BENCHMARK_PREFIXES) and not task.name.endswith("_train"):
            message = (
                f"tasks: {task.name} is a common benchmark; optimising against its test set "
                "games the benchmark"
            )
            if not allow:
                raise ConfigError(f"{message}. Pass {BENCHMARK_FLAG} to proceed anyway")
            warnings.append(message)
    return warnings


def task_search_paths(config: ScoringConfig, extra: tuple[str, ...] | list[str] = (),
                      config_dir: Path | None = None) -> list[str]:
    """A run or pool config's task_search_path plus the CLI's, each resolved against the
    config's folder and checked to exist (the one place either command does this)."""
    paths = []
    for p in [*config.evaluation.task_search_path, *extra]:
        resolved = resolve_path(p, config_dir)
        if not Path(resolved).is_dir():
            raise ConfigError(f"task search path {p} is not a directory")
        paths.append(resolved)
    return paths


def make_task_manager(paths: list[str], needed: list[str] | None = None):
    """lm-eval's TaskManager over `paths`, plus the built-in tasks when needed.

    Indexing lm-eval's ~15k built-in tasks is the 10-30 s step, so when every task the
    run needs lives under `paths` we index only those folders.
    """
    from lm_eval.tasks import TaskManager

    if paths and needed:
        local = TaskManager(include_path=paths, include_defaults=False)
        if not unknown_tasks(local, needed):
            return local
    return TaskManager(include_path=paths or None)


def unknown_tasks(task_manager, names: list[str]) -> list[str]:
    known = set(task_manager.all_tasks)
    return [n for n in names if n not in known]


def check_tasks(config: ScoringConfig, task_manager) -> None:
    refuse_unknown_tasks(unknown_tasks(task_manager, [t.name for t in config.tasks]))


def refuse_unknown_tasks(missing: list[str]) -> None:
    """The one error for tasks lm-eval does not know, from `validate` or from the workers."""
    if missing:
        raise ConfigError(
            f"tasks: unknown lm-eval task {', '.join(missing)} (add its folder with "
            "--task-search-path or evaluation.task_search_path)"
        )
