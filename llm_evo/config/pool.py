"""The pool config: a `pool:` section plus the run config's `tasks:` and lm-eval keys.

`tasks:`, `limit`, `num_fewshot`, ... and `evaluation:` mean exactly what they mean for
`llm-evo run` (both come from `ScoringConfig` in base.py, which also reads, overrides and
diffs both kinds), so one objective can be scored by both commands. A pool config has no
`genome:`; the `pool:` key is what tells the two kinds of config apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from llm_evo.config.base import Frozen, ScoringConfig
from llm_evo.errors import ConfigError

PoolMethod = Literal["slerp", "linear", "task_arithmetic"]


class PoolSection(Frozen):
    """What to merge and how the greedy loop runs.

    `t`: slerp's interpolation factor; for linear and task_arithmetic the two parents get
    weights `(1 - t, t)` unless `weights` is given. `exploration`: also merge the best
    model with its least related model each round (off: the plain greedy baseline).
    `kinship_stop`: stop once the mean pairwise kinship of the top-k passes it (for `ed`,
    a distance: falls below it). `max_evaluations` caps the whole run, inputs included, so
    two runs can be compared at the same budget.
    """

    models: list[str] = Field(min_length=2)
    base_model: str = Field(min_length=1)
    top_k: int = Field(default=3, ge=2)
    merge_method: PoolMethod = "slerp"
    t: float = Field(default=0.5, ge=0.0, le=1.0)
    weights: tuple[float, float] | None = None
    dtype: str | None = None
    exploration: bool = True
    kinship_metric: Literal["pcc", "cs", "ed"] = "pcc"
    kinship_stop: float | None = None
    max_rounds: int = Field(default=20, ge=1)
    max_evaluations: int | None = Field(default=None, ge=1)
    seed: int = 42

    @model_validator(mode="after")
    def _consistent(self) -> PoolSection:
        if len(set(self.models)) != len(self.models):
            raise ValueError("pool.models lists a model twice")
        if self.base_model in self.models:
            raise ValueError("pool.base_model is also in pool.models (kinship is measured "
                             "against the base, so it cannot be a pool member)")
        if self.weights is not None and self.merge_method == "slerp":
            raise ValueError("pool.weights is for linear and task_arithmetic; slerp uses t")
        if self.max_evaluations is not None and self.max_evaluations < len(self.models):
            raise ValueError(f"pool.max_evaluations {self.max_evaluations} does not cover the "
                             f"{len(self.models)} input models")
        return self

    @property
    def pair_weights(self) -> tuple[float, float]:
        return self.weights if self.weights is not None else (1.0 - self.t, self.t)


class PoolConfig(ScoringConfig):
    """A whole pool run: the pool, and the run config's scoring sections."""

    WHAT: ClassVar[str] = "pool config"
    SECTIONS: ClassVar[str] = "pool: and tasks:"

    pool: PoolSection

    @model_validator(mode="after")
    def _disk_only(self) -> PoolConfig:
        # Pool members must exist on disk (they are kept, merged again and deleted), so
        # the in-memory backend, which never writes a merge, does not fit.
        if self.evaluation.in_memory:
            raise ValueError("evaluation.in_memory is not supported by llm-evo pool")
        if self.evaluation.screening is not None:
            raise ValueError("evaluation.screening is for llm-evo run's searches, not pool")
        return self

    @classmethod
    def check_kind(cls, data: dict[str, Any], source: str) -> None:
        if "genome" in data:
            raise ConfigError(f"{source}: this is a run config (it has genome:); llm-evo pool "
                              "needs a pool: section")


def is_pool_config(data: Any) -> bool:
    """Whether a loaded YAML mapping is a pool config (it has `pool:`, not `genome:`)."""
    return isinstance(data, dict) and "pool" in data and "genome" not in data


def parse_pool_config(data: Any, source: str = "<pool config>") -> PoolConfig:
    """Validate a mapping into a PoolConfig, raising a one-line ConfigError."""
    return PoolConfig.from_data(data, source)


def load_pool_config(path: str | Path) -> PoolConfig:
    """Read and validate a pool config file."""
    return PoolConfig.from_file(path)
