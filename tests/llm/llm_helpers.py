"""Shared helpers for the LLM strategy tests: search spaces, a synthetic objective, a loop
that plays the controller's part (ask, score, tell, drain events)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import numpy as np

from llm_evo.config import GenomeConfig, LLMConfig
from llm_evo.genome import Genome, SearchSpace
from llm_evo.strategies.llm import LLMStrategy

API_KEY = "sk-test-Zq8vR2mK4pX7wN1c"  # a fake key that must never be recorded


def make_space(negative: bool = False, num_layers: int = 4, granularity: int = 2,
               models: int = 2) -> SearchSpace:
    """A linear merge: (num_layers / granularity) layer groups x `models` weights."""
    config = GenomeConfig(
        models=[f"org/model-{chr(97 + i)}" for i in range(models)],
        merge_method="linear",
        layer_granularity=granularity,
        allow_negative_weights=negative,
    )
    return Genome(config, list(config.models), None, num_layers).space


def quadratic(target: np.ndarray) -> Callable[[np.ndarray], float]:
    """Higher is better, peaking at `target`."""
    return lambda x: -float(np.sum((np.asarray(x) - target) ** 2))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_strategy(space: SearchSpace, base_url: str, *, seed: int = 1,
                  population_size: int | None = 4, api_key: str | None = API_KEY,
                  **llm: Any) -> LLMStrategy:
    """Built and started as the controller does it: the preflight runs in `start()`."""
    options = {"model": "fault-model", "timeout": 5.0, "backoff_base": 0.05, **llm}
    strategy = LLMStrategy(space, seed=seed, population_size=population_size,
                           llm=LLMConfig(**options), api_key=api_key, base_url=base_url)
    strategy.start()
    return strategy


def run(strategy: LLMStrategy, generations: int,
        fitness: Callable[[np.ndarray], float | None]) -> tuple[list[dict], list[list]]:
    """Play the controller: returns (every drained event, every generation's genotypes)."""
    events = strategy.drain_events()
    population: list[list] = []
    for _ in range(generations):
        genotypes = strategy.ask()
        population.append(genotypes)
        strategy.tell(genotypes, [fitness(g) for g in genotypes])
        events += strategy.drain_events()
    return events, population


def of_kind(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["kind"] == kind]
