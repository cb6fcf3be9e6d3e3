"""Registry of search strategies, by name, as lazy "module:Class" strings.

Registering by string keeps heavy imports (cma, openai) out of `llm-evo --help` and lets
a strategy's dependencies be optional, as lm-eval's model registry does.

A strategy receives only its own options: its constructor names them (keyword-only, no
`**kwargs`), `from_config` picks them out of a run's config, and `make_strategy` refuses
an option the strategy does not take with one line naming it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from llm_evo.errors import ConfigError
from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy, default_population_size

if TYPE_CHECKING:
    from llm_evo.config import RunConfig

STRATEGIES: dict[str, str] = {
    "cma": "llm_evo.strategies.cma_es:CMAES",
    "ctf": "llm_evo.strategies.coarse_to_fine:CoarseToFineCMA",
    "ctf-gp": "llm_evo.strategies.coarse_to_fine_gp:CoarseToFineGP",
    "random": "llm_evo.strategies.random_search:RandomSearch",
    "llm": "llm_evo.strategies.llm:LLMStrategy",
    "tpe": "llm_evo.strategies.optuna_samplers:TPE",
    "gp": "llm_evo.strategies.optuna_samplers:GaussianProcess",
    "nsga2": "llm_evo.strategies.optuna_samplers:NSGA2",
}


def register_strategy(name: str, target: str) -> None:
    """Add (or replace) `name`, as "module:Class"; the module is imported on first use."""
    STRATEGIES[name] = target


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ConfigError(
            f"search.strategy: unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})"
        )
    module_name, attr = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def strategy_options(cls: type[Strategy]) -> tuple[str, ...]:
    """The options `cls`'s constructor takes, read from its signature (after `space`)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params):
        raise TypeError(f"{cls.__name__}.__init__ must name its options, not take *args or "
                        "**kwargs")
    return tuple(p.name for p in params)


def make_strategy(name: str, space: SearchSpace, **options: Any) -> Strategy:
    """Strategy `name` built from options given one by one (tests, benchmarks); an option
    it does not take is a ConfigError naming it, not a silently ignored keyword."""
    cls = strategy_class(name)
    known = strategy_options(cls)
    unknown = [key for key in options if key not in known]
    if unknown:
        raise ConfigError(f"search.strategy: {name} takes no option {', '.join(unknown)} "
                          f"(its options: {', '.join(known)})")
    return cls(space, **options)


def strategy_from_config(space: SearchSpace, config: RunConfig,
                         secrets: Mapping[str, str] | None = None) -> Strategy:
    """The run's strategy (`search.strategy`), given only its own options from `config`
    and `secrets`. Builds it only: the caller runs `start()` before the first ask."""
    return check_strategy(config).from_config(space, config, secrets or {})


def check_strategy(config: RunConfig) -> type[Strategy]:
    """The run's strategy class, or a ConfigError: an unknown name, or one that cannot
    search the Pareto front that `search.objective: pareto` asks for."""
    cls = strategy_class(config.search.strategy)
    if config.search.objective == "pareto" and not cls.multi_objective:
        capable = [n for n in STRATEGIES if strategy_class(n).multi_objective]
        raise ConfigError(f"search.objective: pareto needs a multi-objective strategy, and "
                          f"{config.search.strategy} is not one (choose from "
                          f"{', '.join(capable)})")
    return cls


__all__ = ["STRATEGIES", "Strategy", "check_strategy", "default_population_size",
           "make_strategy",
           "register_strategy", "strategy_class", "strategy_from_config", "strategy_options"]
