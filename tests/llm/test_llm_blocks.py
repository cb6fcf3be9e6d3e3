"""Block-wise queries (EvoLLM, arXiv 2402.18381) for large genomes: `llm.block_rows` sends
one request per block of rows, each showing and asking for only that block's genes. Real
HTTP against our own OpenAI-compatible test server (tests/llm/fault_server.py)."""

from __future__ import annotations

import numpy as np
from fault_server import FaultServer
from llm_helpers import make_space, make_strategy, of_kind, quadratic, run

FITNESS = quadratic(np.full(8, 0.5))
# The LLM's raw mean, not pulled toward the best: the blocks' answers are what it is.
RAW = {"best_share": 0.0, "trust_region": False}


def _by_block(body: dict) -> dict:
    """10 for the block that holds layers 0-1 (the first), 90 for any other."""
    prompt = body["messages"][-1]["content"]
    value = 10 if "layers 0-1" in prompt else 90
    rows = body["response_format"]["json_schema"]["schema"]["properties"]["mean_genome"]
    return {"thought": "t", "mean_genome": [[value] * 2 for _ in range(rows["minItems"])]}


def test_each_block_is_asked_for_its_own_rows(fault_server: FaultServer) -> None:
    fault_server.answer = _by_block
    space = make_space(num_layers=8, granularity=2)  # 4 layer groups x 2 models
    strategy = make_strategy(space, fault_server.url, population_size=4, block_rows=2,
                             **RAW)
    run(strategy, 1, FITNESS)
    mean = strategy.ask()[0]
    chats = fault_server.chat_requests()
    assert len(chats) == 2  # generation 1: one request per block of 2 rows
    for body, (shown, hidden) in zip(chats, (("layers 0-1", "layers 4-5"),
                                             ("layers 4-5", "layers 0-1")), strict=True):
        prompt = body["messages"][-1]["content"]
        assert shown in prompt and hidden not in prompt
        assert len(body["messages"]) == 2  # system + user: no conversation history
        grid = body["response_format"]["json_schema"]["schema"]["properties"]["mean_genome"]
        assert grid["minItems"] == 2 and grid["items"]["minItems"] == 2
    assert np.allclose(mean, space.lower + np.repeat([0.1, 0.9], 4)
                       * (space.upper - space.lower))
    assert strategy.history == []


def _after_one_generation(server: FaultServer, block_rows: int):
    """(space, strategy) told one generation, each block asked once with no retry."""
    server.answer = _by_block
    space = make_space(num_layers=8, granularity=2)
    strategy = make_strategy(space, server.url, population_size=4, block_rows=block_rows,
                             max_retries=0, **RAW)
    run(strategy, 1, FITNESS)
    return space, strategy


def test_a_block_without_an_answer_keeps_the_best_genes(fault_server: FaultServer) -> None:
    space, strategy = _after_one_generation(fault_server, 2)
    best = strategy.best_genotype.copy()
    fault_server.script.append("not_json_at_all")  # the first block's only try
    mean = strategy.ask()[0]
    events = strategy.drain_events()
    assert np.allclose(mean[:4], best[:4])
    assert np.allclose(mean[4:], space.lower[4:] + 0.9 * (space.upper - space.lower)[4:])
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["rows"] == [0, 2] and fallback["mean_source"] == "best"
    assert [e["source"] for e in of_kind(events, "llm_mean")] == ["llm"]


def test_no_block_answered_is_a_generation_fallback(fault_server: FaultServer) -> None:
    _, strategy = _after_one_generation(fault_server, 3)
    fault_server.always = "not_json_at_all"
    mean = strategy.ask()[0]
    events = strategy.drain_events()
    assert len(fault_server.chat_requests()) == 2  # blocks of 3 and 1 rows
    assert np.allclose(mean, strategy.best_genotype)
    reasons = [e["reason"] for e in of_kind(events, "llm_fallback")]
    assert reasons[-1] == "no_block_answered" and len(reasons) == 3
    assert [e["source"] for e in of_kind(events, "llm_mean")] == ["best"]
