"""What run and pool configs share: the scoring sections and the one way a config is read.

`tasks:`, `limit`, `num_fewshot`, ... and `evaluation:` mean the same for `llm-evo run` and
`llm-evo pool`, so one objective can be scored by both. Reading a file, validating it into
one-line errors, applying dotted CLI overrides, the identity hash and the resume diff are
written once here and serve both kinds (`ScoringConfig.from_data` and its subclasses).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from llm_evo.errors import ConfigError

C = TypeVar("C", bound="ScoringConfig")


class Frozen(BaseModel):
    """Immutable and strict: a config is validated once, and an unknown key is a typo."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskConfig(Frozen):
    """One lm-eval task in the objective: score += weight * results[name][metric]."""

    name: str = Field(min_length=1)
    weight: float = 1.0
    metric: str = "acc,none"

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class ScreeningConfig(Frozen):
    """Score each candidate on `anchors` items per task first; only the best `promote`
    share of a generation (by estimate) is scored on the rest (docs/screening.md).
    `anchor_method`: `irt` (anchors and estimates from a 2PL item response model fitted on
    every fully scored model so far) or `random` (seeded anchors, estimated by their mean).
    """

    anchors: int = Field(default=10, ge=1)
    promote: float = Field(default=0.25, gt=0, le=1)
    anchor_method: Literal["irt", "random"] = "irt"


class EvaluationConfig(Frozen):
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
    screening: ScreeningConfig | None = None


class ScoringConfig(Frozen):
    """What a merged model is scored on and how: shared by run and pool configs, so both
    read `tasks:`, `limit`, `evaluation:` and the rest the same way."""

    # How error messages name this kind of config, and the keys a file of it must have.
    WHAT: ClassVar[str] = "config"
    SECTIONS: ClassVar[str] = "tasks:"

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

    # ---- reading ---------------------------------------------------------------------------
    @classmethod
    def check_kind(cls, data: dict[str, Any], source: str) -> None:
        """Refuse a mapping that is plainly the other kind of config (a subclass says how),
        with a pointer rather than a list of unknown keys."""

    @classmethod
    def from_data(cls: type[C], data: Any, source: str = "<config>") -> C:
        """Validate a mapping into this kind of config, raising a one-line ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the {cls.WHAT} must be a YAML mapping with "
                              f"{cls.SECTIONS}")
        cls.check_kind(data, source)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, source, cls.WHAT)) from None

    @classmethod
    def from_file(cls: type[C], path: str | Path) -> C:
        """Read and validate a YAML config file."""
        return cls.from_data(read_yaml(path), str(path))

    # ---- identity --------------------------------------------------------------------------
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


def with_overrides(config: C, overrides: dict[str, Any]) -> C:
    """Apply dotted-path overrides (e.g. {"search.seed": 3}, {"pool.top_k": 4}) to a run or
    pool config; None values are ignored (a flag that was not given).

    Re-validates the merged result, so a bad flag value fails like a bad config value.
    """
    data = apply_overrides(config.model_dump(mode="python"), overrides)
    return type(config).from_data(data, "command-line flags")


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


def format_validation_error(exc: ValidationError, source: str, what: str = "config") -> str:
    """One line for a pydantic error: where, what is wrong, and how many more there are."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"].removeprefix("Value error, ")
    where = f" at {loc}" if loc else ""
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: invalid {what}{where}: {msg}{more}"


# ---- resume check ----------------------------------------------------------------------------
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
