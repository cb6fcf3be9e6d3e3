"""Building the LLM strategy is configuration only: no request and no environment read.
The first request is `start()`'s preflight (what the controller runs before Ray starts)
or, without it, generation 1's `ask`. Counted on a real loopback socket."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fault_server import ConnectionCounter, FaultServer
from llm_helpers import API_KEY, make_space, of_kind, quadratic

from llm_evo.config import LLMConfig, parse_config
from llm_evo.errors import ConfigError
from llm_evo.strategies import make_strategy, strategy_from_config
from llm_evo.strategies.llm import LLMStrategy

FITNESS = quadratic(np.array([0.7, 0.3, 0.6, 0.4]))


def test_no_network_call_until_ask(monkeypatch) -> None:
    with ConnectionCounter() as server:
        # What the CLI would read; the strategy must not look at it.
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        strategy = LLMStrategy(make_space(), seed=0, population_size=4, api_key=API_KEY,
                               llm=LLMConfig(model="m", timeout=5.0), base_url=server.url)
        same = make_strategy("llm", make_space(), seed=0, population_size=4,
                             llm=LLMConfig(model="m"), base_url=server.url)
        config = parse_config({"genome": {"models": ["a", "b"], "merge_method": "linear"},
                               "tasks": ["t"], "search": {"strategy": "llm"},
                               "llm": {"model": "m", "base_url": server.url}})
        strategy_from_config(make_space(), config, {"api_key": API_KEY})
        time.sleep(0.3)  # a connection from any constructor would have been counted by now
        assert server.connections == 0
        assert same.client.url == server.url
        genotypes = strategy.ask()  # generation 0 is the uniform merge: no model needed
        strategy.tell(genotypes, [FITNESS(g) for g in genotypes])
        assert server.connections == 0
        strategy.ask()  # generation 1 asks the model: the first request
        assert server.connections == 1
    (fallback,) = of_kind(strategy.drain_events(), "llm_fallback")
    assert fallback["reason"] == "unreachable" and fallback["generation"] == 1
    assert not of_kind(same.drain_events(), "llm_preflight")


def test_start_is_the_first_request_and_an_unreachable_server_only_warns() -> None:
    with ConnectionCounter() as server:
        strategy = LLMStrategy(make_space(), seed=0, llm=LLMConfig(model="m"),
                               base_url=server.url)
        assert server.connections == 0 and not of_kind(strategy.events, "llm_preflight")
        strategy.start()
        assert server.connections == 1
    (preflight,) = of_kind(strategy.drain_events(), "llm_preflight")
    assert preflight["ok"] is False and preflight["reason"] == "unreachable"


def test_the_environment_is_not_read(fault_server: FaultServer, monkeypatch) -> None:
    """Without a URL or key passed in, OPENAI_BASE_URL and OPENAI_API_KEY are ignored:
    resolving them is the command line's job (`secret_kwargs`)."""
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    unnamed = LLMStrategy(make_space(), seed=0, llm=LLMConfig())
    assert unnamed.client.url == "https://api.openai.com/v1"
    keyless = LLMStrategy(make_space(), seed=0, llm=LLMConfig(model="m"),
                          base_url=fault_server.url)
    with pytest.raises(ConfigError, match="refused the API key"):  # the env key was not sent
        keyless.start()
    (request,) = fault_server.requests
    assert request["preflight"] and request["key_ok"] is False
