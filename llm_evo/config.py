"""The run configuration: frozen pydantic models validated once, at the edge.

The `genome:`/`tasks:` sections and top-level lm-eval knobs are exactly mergekit-evolve's
schema, so its configs load unchanged; `search:`, `evaluation:`, `llm:`, `kinship:` and
`wandb:` are llm-evo's own optional sections. Every validation failure becomes a
`ConfigError` whose one-line message names the offending field and file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llm_evo.errors import ConfigError
from llm_evo.model_ref import canonical_model_ref

MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare_ties", "slerp"]
METHODS_NEEDING_BASE = ("task_arithmetic", "ties", "dare_ties")
# Any form mergekit's ModelReference accepts, kept as its string form (see model_ref.py).
ModelRefStr = Annotated[str, BeforeValidator(canonical_model_ref)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskConfig(_Frozen):
    """One lm-eval task in the objective: score += weight * results[name][metric]."""

    name: str = Field(min_length=1)
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class GenomeConfig(_Frozen):
    """mergekit-evolve's `genome:` section, field for field."""

    models: list[ModelRefStr] = Field(min_length=1)
    merge_method: MergeMethod
    base_model: ModelRefStr | None = None
    tokenizer_source: str | None = None
    layer_granularity: int = Field(default=0, ge=0)
    normalize: bool | None = None
    allow_negative_weights: bool = False
    smooth: bool = False
    filters: list[str] | None = None

    @model_validator(mode="after")
    def _method_needs(self) -> GenomeConfig:
        if self.merge_method in METHODS_NEEDING_BASE and not self.base_model:
            raise ValueError(f"genome.base_model is required for merge_method {self.merge_method}")
        if self.merge_method == "slerp":
            n = len(self.models)
            if n < 2:  # with more, each layer group slerps its two top-weighted models
                raise ValueError(f"genome.models: slerp needs at least 2 models, got {n}")
            if self.smooth:
                raise ValueError("genome.smooth is not supported for slerp")
            if n > 2 and self.filters:
                raise ValueError("genome.filters is not supported for slerp over more than "
                                 "2 models")
        if len(set(self.models)) != len(self.models):
            raise ValueError("genome.models lists a model twice")
        return self

    @property
    def effective_normalize(self) -> bool:
        """mergekit-evolve's default: normalise for linear, ties and dare_ties."""
        if self.normalize is not None:
            return self.normalize
        return self.merge_method in ("linear", "ties", "dare_ties")


class SearchConfig(_Frozen):
    """`init: data` starts the search at data-driven weights: softmax(-loss / temperature)
    of each model's loss on `example_data` (JSONL {input, output}; see docs/mix.md)."""

    strategy: str = "cma"
    population_size: int | None = Field(default=None, ge=2)
    max_generations: int = Field(default=10, ge=1)
    # mergekit-evolve's --max-fevals: a budget of candidate evaluations; the run stops after
    # the generation that reaches it (whole generations, as pycma counts), or after
    # max_generations, whichever comes first. Parents are scored outside the budget.
    max_fevals: int | None = Field(default=None, ge=1)
    seed: int = 42
    sigma0: float = Field(default=0.2, gt=0)
    sigma_low: float = Field(default=0.05, ge=0)
    sigma_high: float = Field(default=0.2, ge=0)
    evaluate_parents: bool = True
    init: Literal["uniform", "data"] = "uniform"
    example_data: str | None = None
    temperature: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _init_data(self) -> SearchConfig:
        if self.init == "data" and not self.example_data:
            raise ValueError("search.init: data needs search.example_data (a JSONL file)")
        if self.example_data and self.init != "data":
            raise ValueError("search.example_data is set but search.init is not data")
        return self


class EvaluationConfig(_Frozen):
    """How candidates are scored (see docs/performance.md, "Evaluation throughput").

    `in_memory`: one resident model per worker, merged tensors copied into it, no disk
    I/O. `backend: vllm` scores with vLLM (an optional install). `reshard`: copy the input
    models once into STORAGE/input_models before the workers start (on-disk merges read
    them for every candidate). `input_cache`: where in-memory workers keep the input
    tensors, "auto" (the GPU while memory allows, else the CPU) or "cpu". `torch_threads`:
    intra-op threads per CPU worker (default: the CPUs divided among the workers).
    `gpus_per_worker`: GPUs each worker reserves on one node, for models larger than one
    GPU (HF shards with device_map="auto", vLLM with tensor parallelism).
    """

    backend: Literal["hf", "vllm"] = "hf"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | Literal["auto"] | None = None
    apply_chat_template: bool | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    task_search_path: list[str] = Field(default_factory=list)
    in_memory: bool = False
    reshard: bool = False
    input_cache: Literal["auto", "cpu"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1)
    gpus_per_worker: int = Field(default=1, ge=1)


class LLMConfig(_Frozen):
    """The LLM strategy's chat model and how hard to try it (see docs/llm-strategy.md).

    There is deliberately no api_key field: keys come from --api-key or OPENAI_API_KEY, so
    they never land in a config file, a stored config or W&B.
    """

    model: str | None = None
    base_url: str | None = None
    max_retries: int = Field(default=3, ge=0)
    top_k: int = Field(default=5, ge=1)
    temperature: float = Field(default=0.7, ge=0)
    history: int = Field(default=2, ge=0)
    timeout: float = Field(default=60.0, gt=0)
    system_prompt: str | None = None
    user_prompt: str | None = None
    max_tokens: int = Field(default=1024, ge=16)
    thought_max_chars: int = Field(default=400, ge=0)
    response_format: Literal["auto", "json_schema", "json_object", "text"] = "auto"
    backoff_retries: int = Field(default=4, ge=0)
    backoff_base: float = Field(default=1.0, gt=0)
    backoff_max: float = Field(default=60.0, gt=0)


class KinshipConfig(_Frozen):
    """Kinship-aware search (see docs/kinship-search.md).

    The search sees `score - penalty * max(0, k - threshold)`, k the candidate's mean kinship
    to the reference set (`against`); for `ed`, a distance, closeness is what is penalised:
    `max(0, threshold - k)`. `stagnation`: when the population's mean pairwise kinship stays
    beyond it for `stagnation_generations`, the strategy widens its search. Kinship is
    measured when `enabled` is true, or, by default, when a penalty or stagnation is set.
    """

    metric: Literal["cs", "pcc", "ed"] = "cs"
    penalty: float = Field(default=0.0, ge=0)
    threshold: float = 0.9
    against: Literal["elite", "population", "mean"] = "elite"
    stagnation: float | None = None
    stagnation_generations: int = Field(default=3, ge=1)
    enabled: bool | None = None
    elite_size: int = Field(default=5, ge=1)
    sketch_size: int = Field(default=32768, ge=1024)

    @model_validator(mode="after")
    def _consistent(self) -> KinshipConfig:
        if self.enabled is False and (self.penalty > 0 or self.stagnation is not None):
            raise ValueError("kinship.enabled is false, but kinship.penalty or "
                             "kinship.stagnation asks for kinship")
        return self

    @property
    def active(self) -> bool:
        """Whether the run measures kinship at all (one extra read of the models at start)."""
        if self.enabled is not None:
            return self.enabled
        return self.penalty > 0 or self.stagnation is not None


class WandbConfig(_Frozen):
    """Weights & Biases logging (see llm_evo/tracking.py); off unless enabled.

    `mode` None defers to WANDB_MODE; "offline" keeps everything on disk for `wandb sync`.
    There is no key field: W&B reads WANDB_API_KEY or `wandb login` itself.
    """

    enabled: bool = False
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    notes: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None


class ScoringConfig(_Frozen):
    """What a merged model is scored on and how: shared by run and pool configs, so both
    read `tasks:`, `limit`, `evaluation:` and the rest the same way."""

    tasks: list[TaskConfig] = Field(min_length=1)
    limit: int | None = Field(default=None, ge=1)
    num_fewshot: int | None = Field(default=None, ge=0)
    shuffle: bool = False
    apply_chat_template: bool = True
    fewshot_as_multiturn: bool = True
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskConfig]) -> list[TaskConfig]:
        # One task may be scored on several metrics (results are keyed name/metric), as
        # mergekit-evolve allows; the same (name, metric) twice is a mistake.
        keys = [(t.name, t.metric) for t in tasks]
        dupes = sorted({f"{n} ({m})" for n, m in keys if keys.count((n, m)) > 1})
        if dupes:
            raise ValueError(f"tasks: {', '.join(dupes)} listed twice")
        return tasks

    @property
    def chat_template(self) -> bool:
        if self.evaluation.apply_chat_template is not None:
            return self.evaluation.apply_chat_template
        return self.apply_chat_template

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)

    def identity(self) -> dict[str, Any]:
        """What defines the run, for its hash and the resume check: the whole config but
        how many GPUs a worker spans (RunConfig also leaves out where it runs and logs)."""
        data = self.model_dump(mode="json")
        data["evaluation"].pop("gpus_per_worker")  # moving to bigger GPUs: the same run
        return data

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunConfig(ScoringConfig):
    """A whole run: mergekit-evolve's schema plus llm-evo's optional sections."""

    genome: GenomeConfig
    random_init: bool = False
    search: SearchConfig = Field(default_factory=SearchConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    kinship: KinshipConfig = Field(default_factory=KinshipConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _one_start(self) -> RunConfig:
        if self.random_init and self.search.init == "data":
            raise ValueError("random_init and search.init: data both choose the start point")
        if self.search.init == "data" and self.genome.merge_method == "slerp":
            raise ValueError("search.init: data sets merge weights; slerp has none")
        return self

    def identity(self) -> dict[str, Any]:
        """What defines the search, minus where it runs and where it logs: resuming with
        W&B switched on, or with the LLM server on another port, is the same run."""
        data = super().identity()
        data.pop("wandb")
        data["llm"].pop("base_url")
        return data


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`field: old -> new` lines for every leaf that differs (for the resume check)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            lines += config_diff(a, b, name + ".")
        elif a != b:
            lines.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return lines


def resume_diff(stored_json: str, config: ScoringConfig) -> list[str]:
    """What stops `config` (a run or a pool config) from continuing a run stored as
    `stored_json` (empty: nothing).

    The stored config is read with today's schema, so a field added since that run takes
    its default on both sides, and an upgrade alone never blocks a resume.
    """
    stored = type(config).model_validate_json(stored_json)
    return config_diff(stored.identity(), config.identity())


def format_diff(lines: list[str], most: int = 6) -> str:
    """`config_diff` lines on one line, the first `most` of them and a count of the rest."""
    return "; ".join(lines[:most]) + (f"; +{len(lines) - most} more" if len(lines) > most
                                      else "")


def format_validation_error(exc: ValidationError, source: str, what: str = "config") -> str:
    """One line for a pydantic error: where, what is wrong, and how many more there are."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    where = f" at {loc}" if loc else ""
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: invalid {what}{where}: {msg}{more}"


def parse_config(data: Any, source: str = "<config>") -> RunConfig:
    """Validate a mapping into a RunConfig, raising ConfigError with a one-line message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a YAML mapping with genome: and tasks:")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a missing file or bad YAML is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError(f"{path}:{where}: {problem}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config file."""
    return parse_config(read_yaml(path), str(path))


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted paths (e.g. {"search.seed": 3}) in a config mapping; None values are
    ignored (a flag that was not given)."""
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


def with_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply dotted-path overrides (e.g. {"search.seed": 3}); None values are ignored.

    Re-validates the merged result, so a bad flag value fails like a bad config value.
    """
    data = apply_overrides(config.model_dump(mode="python"), overrides)
    return parse_config(data, "command-line flags")
