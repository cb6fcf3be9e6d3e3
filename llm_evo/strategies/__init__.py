"""Registry of search strategies, by name, as lazy "module:Class" strings.

Registering by string keeps heavy imports (cma, openai) out of `llm-evo --help` and lets
a strategy's dependencies be optional, as lm-eval's model registry does.
"""

from __future__ import annotations

import importlib
from typing import Any

from llm_evo.errors import ConfigError
from llm_evo.genome import SearchSpace
from llm_evo.strategies.base import Strategy, default_population_size

STRATEGIES: dict[str, str] = {
    "cma": "llm_evo.strategies.cma_es:CMAES",
    "random": "llm_evo.strategies.random_search:RandomSearch",
    "llm": "llm_evo.strategies.llm:LLMStrategy",
}


def register_strategy(name: str, target: str) -> None:
    STRATEGIES[name] = target


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ConfigError(
            f"search.strategy: unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})"
        )
    module_name, attr = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(module_name), attr)


def make_strategy(name: str, space: SearchSpace, **kwargs: Any) -> Strategy:
    return strategy_class(name)(space, **kwargs)


__all__ = ["STRATEGIES", "Strategy", "default_population_size", "make_strategy",
           "register_strategy", "strategy_class"]
