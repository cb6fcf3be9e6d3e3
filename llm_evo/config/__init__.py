"""Configs: `run.py` (an evolutionary merge search) and `pool.py` (a model pool), both built
on `base.py` (the scoring sections, one reader, overrides, identity hash and resume diff).

Pure schema: pydantic and yaml only, so `--help` and validation stay fast. The names below
are the package's API (`from llm_evo.config import RunConfig, load_config`).
"""

from llm_evo.config.base import (
    EvaluationConfig,
    Frozen,
    ScoringConfig,
    ScreeningConfig,
    TaskConfig,
    apply_overrides,
    config_diff,
    format_diff,
    format_validation_error,
    read_yaml,
    resume_diff,
    with_overrides,
)
from llm_evo.config.pool import (
    PoolConfig,
    PoolSection,
    is_pool_config,
    load_pool_config,
    parse_pool_config,
)
from llm_evo.config.run import (
    METHODS_NEEDING_BASE,
    GenomeConfig,
    KinshipConfig,
    LLMConfig,
    RunConfig,
    SearchConfig,
    WandbConfig,
    load_config,
    parse_config,
)

__all__ = [
    "METHODS_NEEDING_BASE", "EvaluationConfig", "Frozen", "GenomeConfig", "KinshipConfig",
    "LLMConfig", "PoolConfig", "PoolSection", "RunConfig", "ScoringConfig", "ScreeningConfig",
    "SearchConfig",
    "TaskConfig", "WandbConfig", "apply_overrides", "config_diff", "format_diff",
    "format_validation_error", "is_pool_config", "load_config", "load_pool_config",
    "parse_config", "parse_pool_config", "read_yaml", "resume_diff", "with_overrides",
]
