"""LLMStrategy against a real model: SmolLM2-135M-Instruct behind llama-cpp-python's
OpenAI-compatible server, through the real openai client. The model is tiny and often
answers badly (numbers out of range, wrong shapes), which exercises validation, retries and
fallback for real; the assertions hold whichever way each answer goes."""

from __future__ import annotations

import json

import numpy as np
from llm_helpers import API_KEY, make_space, of_kind, quadratic, run

from llm_evo.config import LLMConfig
from llm_evo.strategies.llm import LLMStrategy


def test_smollm2_drives_the_search(llama_server: str) -> None:
    space = make_space()
    config = LLMConfig(
        model="smollm2-135m", max_tokens=96, thought_max_chars=40, max_retries=1, top_k=3,
        history=1, temperature=0.3, timeout=150.0,
    )
    strategy = LLMStrategy(space, seed=0, population_size=3, llm=config, api_key=API_KEY,
                           base_url=llama_server)
    strategy.start()
    events, population = run(strategy, 3, quadratic(np.array([0.7, 0.3, 0.6, 0.4])))

    (preflight,) = of_kind(events, "llm_preflight")
    assert preflight["ok"] is True
    # llama-cpp-python's server refuses json_schema (HTTP 500) and takes json_object+schema.
    (rejected,) = of_kind(events, "llm_format_rejected")
    assert rejected["mode"] == "json_schema"
    (accepted,) = of_kind(events, "llm_response_format")
    assert accepted["mode"] == "json_object" and accepted["generation"] == 1
    assert strategy.state_dict()["response_format"] == "json_object"

    exchanges = of_kind(events, "llm_exchange")
    assert {e["generation"] for e in exchanges} == {1, 2}
    for e in exchanges:
        assert e["prompt"] and e["response_format"] == "json_object"
        assert e["outcome"] in ("accepted", "invalid")
        assert isinstance(e["response"], str)
        assert (e["error"] is None) == (e["outcome"] == "accepted")
    # Each LLM generation ends in the model's mean or a recorded fallback to the best.
    means = of_kind(events, "llm_mean")
    assert [m["generation"] for m in means] == [1, 2]
    fallbacks = {f["generation"]: f for f in of_kind(events, "llm_fallback")}
    for m in means:
        assert (m["source"] == "llm") != (m["generation"] in fallbacks)
    assert [s["generation"] for s in of_kind(events, "sigma")] == [0, 1, 2]

    for genotypes in population:
        for g in genotypes:
            assert np.all(g >= space.lower) and np.all(g <= space.upper)
    assert API_KEY not in json.dumps(events) + json.dumps(strategy.state_dict())
    print("\n".join(f"gen {e['generation']} try {e['attempt']}: {e['outcome']}: "
                    f"{(e['response'] or '')[:160]!r} {e['error'] or ''}" for e in exchanges))


def test_smollm2_in_plain_text_mode_is_validated_and_falls_back(llama_server: str) -> None:
    """Without a grammar the tiny model rarely produces the right JSON: whatever it says,
    each try is recorded, invalid ones are fed back, and the run completes."""
    space = make_space(negative=True)
    config = LLMConfig(
        model="smollm2-135m", max_tokens=80, thought_max_chars=40, max_retries=1, top_k=3,
        history=0, temperature=0.8, timeout=150.0, response_format="text",
    )
    strategy = LLMStrategy(space, seed=1, population_size=3, llm=config, api_key=API_KEY,
                           base_url=llama_server)
    strategy.start()
    events, population = run(strategy, 3, quadratic(np.zeros(4)))

    assert not of_kind(events, "llm_format_rejected")  # forced: no probing
    exchanges = of_kind(events, "llm_exchange")
    assert exchanges and {e["response_format"] for e in exchanges} == {"text"}
    for generation in (1, 2):
        tries = [e for e in exchanges if e["generation"] == generation]
        outcomes = [e["outcome"] for e in tries]
        assert outcomes in (["accepted"], ["invalid", "accepted"], ["invalid", "invalid"])
        if outcomes[0] == "invalid":
            assert tries[0]["error"] in tries[1]["prompt"]  # the error went back
        fell_back = [f for f in of_kind(events, "llm_fallback") if f["generation"] == generation]
        assert bool(fell_back) == (outcomes[-1] == "invalid")
        if fell_back:
            assert fell_back[0]["reason"] == "invalid_answers"
            assert fell_back[0]["mean_source"] == "best"
    assert strategy.generation == 3
    for genotypes in population:
        for g in genotypes:
            assert np.all(g >= -1.0) and np.all(g <= 1.0)
    print("\n".join(f"gen {e['generation']} try {e['attempt']}: {e['outcome']}: "
                    f"{(e['response'] or '')[:120]!r} {e['error'] or ''}" for e in exchanges))
