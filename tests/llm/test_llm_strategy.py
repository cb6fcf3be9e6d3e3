"""LLMStrategy's own behaviour over real loopback HTTP: prompts, parsing, mutation, sigma
choice, bounded history, population, resume and configuration errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fault_server import FaultServer
from llm_helpers import API_KEY, make_space, make_strategy, of_kind, quadratic, run

from llm_evo.cli.run_flags import secret_kwargs
from llm_evo.config import LLMConfig
from llm_evo.errors import ConfigError
from llm_evo.strategies import make_strategy as registry_make
from llm_evo.strategies.base import default_population_size
from llm_evo.strategies.llm import LLMStrategy
from llm_evo.strategies.llm.parse import AnswerError, extract_json, parse_answer
from llm_evo.strategies.llm.prompts import Layout

FITNESS = quadratic(np.array([0.7, 0.3, 0.6, 0.4]))


# ---- parsing -------------------------------------------------------------------------------
def test_extract_json_is_lenient() -> None:
    assert extract_json('{"thought": "a\nb\tc", "mean_genome": [1]}')["thought"] == "a\nb\tc"
    assert extract_json('Sure!\n```json\n{"mean_genome": [[1]]}\n```')["mean_genome"] == [[1]]
    assert extract_json('noise {"x": 1} then {"mean_genome": [2]} end')["mean_genome"] == [2]
    with pytest.raises(AnswerError, match="empty"):
        extract_json("   ")
    with pytest.raises(AnswerError, match="not valid JSON"):
        extract_json('{"mean_genome": [1, 2')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"thought": "x"}', "no mean_genome key"),
        ('{"mean_genome": 5}', "must be a list"),
        ('{"mean_genome": [[1, 2]]}', "has 1 rows"),
        ('{"mean_genome": [[1, 2], [3]]}', "mean_genome[1] has 1 values, expected 2"),
        ('{"mean_genome": [[1, 2], [3, Infinity]]}', "not a finite number"),
        ('{"mean_genome": [[1, 2], [3, true]]}', "not a number"),
        ('{"mean_genome": [[1, 2], [3, "4"]]}', "not a number"),
        ('{"mean_genome": [[1, -2], [3, 4]]}', "= -2 is outside the valid range 0..100"),
    ],
)
def test_parse_answer_rejects_with_a_specific_error(text: str, message: str) -> None:
    with pytest.raises(AnswerError) as info:
        parse_answer(text, 2, 2)
    assert message in str(info.value)


def test_parse_answer_accepts_floats_and_a_flat_list() -> None:
    thought, values = parse_answer('{"thought": "t", "mean_genome": [0, 12.5, 50, 100]}', 2, 2)
    assert thought == "t" and values.tolist() == [0, 12.5, 50, 100]


# ---- layout and prompt ---------------------------------------------------------------------
def test_layout_maps_real_ranges_to_0_100() -> None:
    space = make_space(negative=True)
    layout = Layout.from_space(space)
    assert (layout.rows, layout.cols) == (2, 2)
    x = np.array([-1.0, 0.0, 0.5, 1.0])
    assert layout.grid(x) == [[0, 50], [75, 100]]
    np.testing.assert_allclose(layout.from_scale(layout.to_scale(x)), x)
    assert "column 1: model-b / all other tensors / weight (0 means -1, 100 means 1)" in (
        layout.column_legend())
    schema = layout.schema(50)
    assert schema["properties"]["thought"]["maxLength"] == 50
    assert schema["properties"]["mean_genome"]["items"]["items"]["maximum"] == 100


def test_prompt_shows_top_k_worst_to_best(fault_server: FaultServer) -> None:
    strategy = make_strategy(make_space(), fault_server.url, top_k=3)
    events, population = run(strategy, 2, FITNESS)
    messages = fault_server.chat_requests()[0]["messages"]
    assert messages[0]["role"] == "system" and "worst" in messages[0]["content"]
    user = messages[-1]["content"]
    lines = [ln for ln in user.splitlines() if ln.strip().startswith("fitness ")]
    assert len(lines) == 3
    shown = [float(ln.split()[1].rstrip(":")) for ln in lines]
    assert shown == sorted(shown)  # worst to best
    assert f"Best fitness so far: {shown[-1]:.6g}" in user
    assert "row 1: layers 2-3" in user and "column 0: model-a" in user
    assert "between 0 and 100" in user
    grid = json.loads(lines[-1].split(": ", 1)[1])
    assert all(isinstance(v, int) and 0 <= v <= 100 for row in grid for v in row)
    (exchange,) = of_kind(events, "llm_exchange")
    assert exchange["prompt"] == user and exchange["generation"] == 1
    assert of_kind(events, "llm_config")[0]["system_prompt"] == messages[0]["content"]


def test_custom_prompt_files(fault_server: FaultServer, tmp_path) -> None:
    user = tmp_path / "user.txt"
    user.write_text("G$generation best=$best_fitness\n$examples\nAnswer $n_rows x $n_cols.")
    strategy = make_strategy(make_space(), fault_server.url, user_prompt=str(user))
    run(strategy, 2, FITNESS)
    assert fault_server.chat_requests()[0]["messages"][-1]["content"].startswith("G1 best=")
    bad = tmp_path / "bad.txt"
    bad.write_text("$generation $nope")
    with pytest.raises(ConfigError, match=r"llm.user_prompt: .*\$nope"):
        make_strategy(make_space(), fault_server.url, user_prompt=str(bad))
    with pytest.raises(ConfigError, match="llm.system_prompt: prompt file"):
        make_strategy(make_space(), fault_server.url, system_prompt=str(tmp_path / "no.txt"))


# ---- population, mutation, sigma -----------------------------------------------------------
def test_generation_zero_is_uniform_plus_perturbations(fault_server: FaultServer) -> None:
    space = make_space()
    strategy = make_strategy(space, fault_server.url, population_size=None)
    assert strategy.population_size == default_population_size(4) == 8
    population = strategy.ask()
    assert len(population) == 8
    np.testing.assert_array_equal(population[0], space.initial)
    assert all(not np.array_equal(p, space.initial) for p in population[1:])
    assert fault_server.chat_requests() == []  # no LLM call for generation 0
    (sigma,) = of_kind(strategy.drain_events(), "sigma")
    assert sigma["sigma"] == 0.2 and sigma["improved"] is False


def test_mutation_clips_to_the_real_range_not_0_1(fault_server: FaultServer) -> None:
    space = make_space(negative=True)
    fault_server.answer = lambda body: {"thought": "go low", "mean_genome": [[2, 0], [0, 3]]}
    # LLM-Evo-Merge's design: the LLM's mean, unchecked, for the whole generation
    strategy = make_strategy(space, fault_server.url, population_size=12, best_share=0,
                             trust_region=False)
    _, population = run(strategy, 3, FITNESS)
    everything = np.array([g for gen in population for g in gen])
    assert everything.min() >= -1.0 and everything.max() <= 1.0
    assert (everything < -0.5).any()  # negative weights survive: no [0, 1] clipping
    assert (everything == -1.0).any()  # clipped at the real lower bound
    np.testing.assert_allclose(population[1][0], [-0.96, -1.0, -1.0, -0.94])


def test_sigma_follows_improvement(fault_server: FaultServer) -> None:
    strategy = make_strategy(make_space(), fault_server.url)
    events, _ = run(strategy, 3, lambda x: 1.0)  # improves once (from nothing), then flat
    sigmas = [(e["generation"], e["sigma"], e["improved"]) for e in of_kind(events, "sigma")]
    assert sigmas == [(0, 0.2, False), (1, 0.05, True), (2, 0.2, False)]


def test_custom_sigmas_set_the_spread(fault_server: FaultServer) -> None:
    space = make_space()
    strategy = LLMStrategy(space, seed=3, population_size=200, sigma_low=0.01, sigma_high=0.1,
                           llm=LLMConfig(model="m"), api_key=API_KEY, base_url=fault_server.url)
    spread = np.std(np.array(strategy.ask())[1:] - space.initial)
    assert 0.08 < spread < 0.12


def test_failed_candidates_are_ignored_and_all_failed_uses_initial(
    fault_server: FaultServer,
) -> None:
    fault_server.always = "malformed"
    space = make_space()
    strategy = make_strategy(space, fault_server.url, max_retries=0)
    events, population = run(strategy, 2, lambda x: None)
    assert strategy.best_fitness is None and strategy.archive == []
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["mean_source"] == "initial"
    np.testing.assert_array_equal(population[1][0], space.initial)


def test_archive_keeps_top_k_best_first(fault_server: FaultServer) -> None:
    strategy = make_strategy(make_space(), fault_server.url, top_k=3, population_size=6)
    run(strategy, 3, FITNESS)
    fitness = [f for _, f in strategy.archive]
    assert len(fitness) == 3 and fitness == sorted(fitness, reverse=True)
    assert strategy.best_fitness == fitness[0]


# ---- history, determinism, resume ----------------------------------------------------------
@pytest.mark.parametrize("history", [0, 1, 2])
def test_chat_history_is_bounded(fault_server: FaultServer, history: int) -> None:
    strategy = make_strategy(make_space(), fault_server.url, history=history)
    run(strategy, 5, FITNESS)
    sizes = [len(r["messages"]) for r in fault_server.chat_requests()]
    assert sizes == [2 + 2 * min(i, history) for i in range(4)]
    assert len(strategy.state_dict()["history"]) == history


def test_seeded_runs_are_identical(fault_server: FaultServer) -> None:
    _, a = run(make_strategy(make_space(), fault_server.url, seed=5), 3, FITNESS)
    _, b = run(make_strategy(make_space(), fault_server.url, seed=5), 3, FITNESS)
    _, c = run(make_strategy(make_space(), fault_server.url, seed=6), 3, FITNESS)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.array_equal(np.array(a), np.array(c))


def test_resume_continues_identically(fault_server: FaultServer) -> None:
    fault_server.reject_json_schema = True
    original = make_strategy(make_space(), fault_server.url, history=1)
    run(original, 3, FITNESS)
    state = json.loads(json.dumps(original.state_dict()))
    assert state["response_format"] == "json_object" and state["archive"]
    assert API_KEY not in json.dumps(state)
    resumed = make_strategy(make_space(), fault_server.url, history=1)
    resumed.load_state_dict(state)
    a, b = original.ask(), resumed.ask()
    np.testing.assert_array_equal(np.array(a), np.array(b))
    first, second = fault_server.chat_requests()[-2:]
    assert first["messages"] == second["messages"]
    assert second["response_format"]["type"] == "json_object"  # no new probing


def test_ask_twice_does_not_call_the_model_twice(fault_server: FaultServer) -> None:
    strategy = make_strategy(make_space(), fault_server.url)
    run(strategy, 1, FITNESS)
    first, second = strategy.ask(), strategy.ask()
    np.testing.assert_array_equal(np.array(first), np.array(second))
    assert len(fault_server.chat_requests()) == 1


# ---- configuration -------------------------------------------------------------------------
def test_a_server_of_ones_own_needs_a_model(monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"^llm\.model:"):
        LLMStrategy(make_space(), seed=0, llm=LLMConfig(), base_url="http://127.0.0.1:1/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match=r"^llm\.model:"):
        LLMStrategy(make_space(), seed=0, llm=LLMConfig(), **secret_kwargs(None))


def test_no_url_means_openais_endpoint_as_in_llm_evo_merge(monkeypatch) -> None:
    """LLM-Evo-Merge's `OpenAI(api_key=...)`: no URL anywhere selects OpenAI's endpoint and
    its default model gpt-4o. Building the strategy without its preflight calls nothing
    (this machine cannot resolve api.openai.com, so a call would fail here)."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    strategy = LLMStrategy(make_space(), seed=0, llm=LLMConfig(), api_key=API_KEY)
    assert strategy.client.url == "https://api.openai.com/v1"
    assert strategy.client.model == "gpt-4o"
    (config,) = of_kind(strategy.drain_events(), "llm_config")
    assert config["base_url"] == "https://api.openai.com/v1" and config["model"] == "gpt-4o"
    named = LLMStrategy(make_space(), seed=0, llm=LLMConfig(model="gpt-4o-mini"))
    assert named.client.model == "gpt-4o-mini"


def test_url_and_key_from_the_environment(fault_server: FaultServer, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fault_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    strategy = registry_make("llm", make_space(), seed=0, llm=LLMConfig(model="m"),
                             **secret_kwargs(None))
    run(strategy, 2, FITNESS)
    assert fault_server.requests and all(r["key_ok"] for r in fault_server.requests)
    assert fault_server.chat_requests()[0]["model"] == "m"


def test_explicit_arguments_beat_the_config(fault_server: FaultServer) -> None:
    strategy = LLMStrategy(make_space(), seed=0, llm=LLMConfig(model="cfg", base_url="http://x"),
                           model="flag", base_url=fault_server.url, api_key=API_KEY)
    run(strategy, 2, FITNESS)
    assert fault_server.chat_requests()[0]["model"] == "flag"


def test_forced_response_format(fault_server: FaultServer) -> None:
    strategy = make_strategy(make_space(), fault_server.url, response_format="text")
    events, _ = run(strategy, 2, FITNESS)
    assert "response_format" not in fault_server.chat_requests()[0]
    assert of_kind(events, "llm_exchange")[0]["response_format"] == "text"
