"""The fault matrix: the real LLMStrategy over several generations against a loopback
server that misbehaves in each documented way; every case must end in its documented,
recorded outcome and (401/403 excepted) a completed run."""

from __future__ import annotations

import json
import logging
import subprocess
import time

import numpy as np
import pytest
from fault_server import FaultServer
from llm_helpers import API_KEY, free_port, make_space, make_strategy, of_kind, quadratic, run

from llm_evo.errors import ConfigError

TARGET = np.array([0.7, 0.3, 0.6, 0.4])
FITNESS = quadratic(TARGET)


def _gen(events: list[dict], kind: str, generation: int) -> list[dict]:
    return [e for e in of_kind(events, kind) if e["generation"] == generation]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("malformed", "not valid JSON"),
        ("not_json_at_all", "not valid JSON"),
        ("wrong_shape", "has 3 rows, expected 2 lists of 2 numbers"),
        ("nan", "not a finite number"),
        ("out_of_range", "= 150 is outside the valid range 0..100"),
    ],
)
def test_invalid_answer_is_retried_with_the_error_fed_back(
    fault_server: FaultServer, fault: str, message: str
) -> None:
    fault_server.script.extend([fault])
    strategy = make_strategy(make_space(), fault_server.url, max_retries=2)
    events, _ = run(strategy, 3, FITNESS)

    first, second = _gen(events, "llm_exchange", 1)
    assert first["outcome"] == "invalid" and message in first["error"]
    assert first["response"] and first["attempt"] == 1
    assert second["outcome"] == "accepted" and second["error"] is None
    assert second["attempt"] == 2 and second["thought"] == "push the weights up a little"
    # The retry carried the bad answer and the specific error back to the model.
    retry = fault_server.chat_requests()[1]["messages"]
    assert retry[-2]["role"] == "assistant" and retry[-2]["content"] == first["response"]
    assert message in retry[-1]["content"] and second["prompt"] == retry[-1]["content"]
    assert not of_kind(events, "llm_fallback")
    assert [e["source"] for e in of_kind(events, "llm_mean")] == ["llm", "llm"]
    assert strategy.generation == 3


@pytest.mark.parametrize("fault", ["control_chars", "fenced"])
def test_lenient_parsing_accepts_first_time(fault_server: FaultServer, fault: str) -> None:
    fault_server.script.extend([fault])
    events, _ = run(make_strategy(make_space(), fault_server.url), 2, FITNESS)
    (exchange,) = _gen(events, "llm_exchange", 1)
    assert exchange["outcome"] == "accepted" and exchange["attempt"] == 1
    assert exchange["thought"]


def test_retries_exhausted_fall_back_to_best(fault_server: FaultServer, caplog) -> None:
    fault_server.script.extend(["malformed", "nan", "wrong_shape"])
    strategy = make_strategy(make_space(), fault_server.url, max_retries=2)
    events, population = run(strategy, 1, FITNESS)
    best_after_gen0 = strategy.best_genotype.copy()
    with caplog.at_level(logging.WARNING, logger="llm_evo"):
        more, population2 = run(strategy, 2, FITNESS)
    events += more
    assert [e["outcome"] for e in _gen(events, "llm_exchange", 1)] == ["invalid"] * 3
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["generation"] == 1 and fallback["reason"] == "invalid_answers"
    assert fallback["mean_source"] == "best" and "3 invalid answer(s)" in fallback["detail"]
    np.testing.assert_array_equal(population2[0][0], best_after_gen0)
    assert "falls back" in caplog.text
    assert _gen(events, "llm_exchange", 2)[0]["outcome"] == "accepted"  # the run goes on
    assert strategy.generation == 3


@pytest.mark.parametrize("status", [400, 500])  # 500: what llama-cpp-python's server sends
def test_json_schema_rejected_falls_to_json_object_and_is_remembered(
    fault_server: FaultServer, status: int
) -> None:
    fault_server.reject_json_schema = True
    fault_server.reject_status = status
    strategy = make_strategy(make_space(), fault_server.url)
    events, _ = run(strategy, 4, FITNESS)
    assert not of_kind(events, "llm_backoff")  # a rejection is not retried
    kinds = [r["response_format"]["type"] for r in fault_server.chat_requests()]
    assert kinds == ["json_schema", "json_object", "json_object", "json_object"]
    assert fault_server.chat_requests()[1]["response_format"]["schema"]["properties"]
    (rejected,) = of_kind(events, "llm_format_rejected")
    assert rejected["mode"] == "json_schema" and f"HTTP {status}" in rejected["error"]
    assert "Input should be 'text' or 'json_object'" in rejected["error"]
    (accepted,) = of_kind(events, "llm_response_format")
    assert accepted["mode"] == "json_object" and accepted["rejected"] == ["json_schema"]
    assert {e["response_format"] for e in of_kind(events, "llm_exchange")} == {"json_object"}
    assert strategy.state_dict()["response_format"] == "json_object"
    assert not of_kind(events, "llm_fallback")


def test_both_schema_forms_rejected_fall_to_text(fault_server: FaultServer) -> None:
    fault_server.reject_json_schema = fault_server.reject_json_object = True
    fault_server.script.extend(["fenced", "fenced"])
    events, _ = run(make_strategy(make_space(), fault_server.url), 3, FITNESS)
    kinds = [(r.get("response_format") or {}).get("type") for r in fault_server.chat_requests()]
    assert kinds == ["json_schema", "json_object", None, None]
    assert of_kind(events, "llm_response_format")[0]["mode"] == "text"
    assert [e["outcome"] for e in of_kind(events, "llm_exchange")] == ["accepted"] * 2


def test_429_backoff_honours_retry_after(fault_server: FaultServer) -> None:
    fault_server.script.extend(["429"])
    fault_server.retry_after = "1"
    strategy = make_strategy(make_space(), fault_server.url, backoff_base=0.01)
    run(strategy, 1, FITNESS)
    started = time.monotonic()
    events, _ = run(strategy, 1, FITNESS)
    elapsed = time.monotonic() - started
    (backoff,) = of_kind(events, "llm_backoff")
    assert backoff["status"] == 429 and backoff["retry_after"] == 1.0 and backoff["wait_s"] == 1.0
    times = [r["time"] for r in fault_server.requests if not r["preflight"]]
    assert times[1] - times[0] >= 1.0 and elapsed >= 1.0
    assert of_kind(events, "llm_exchange")[0]["outcome"] == "accepted"
    assert not of_kind(events, "llm_fallback")


def test_429_retry_after_beyond_the_cap_falls_back(fault_server: FaultServer) -> None:
    fault_server.script.extend(["429"])
    fault_server.retry_after = "3600"
    strategy = make_strategy(make_space(), fault_server.url, backoff_max=5.0)
    started = time.monotonic()
    events, _ = run(strategy, 2, FITNESS)
    assert time.monotonic() - started < 3
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["reason"] == "rate_limited" and "exceeds llm.backoff_max" in fallback["detail"]


def test_500_is_retried_with_exponential_backoff(fault_server: FaultServer) -> None:
    fault_server.script.extend(["500", "500"])
    strategy = make_strategy(make_space(), fault_server.url, backoff_base=0.1)
    events, _ = run(strategy, 2, FITNESS)
    waits = [e["wait_s"] for e in of_kind(events, "llm_backoff")]
    assert waits == [0.1, 0.2]
    assert all(e["status"] == 500 and e["retry_after"] is None
               for e in of_kind(events, "llm_backoff"))
    times = [r["time"] for r in fault_server.requests if not r["preflight"]]
    assert times[1] - times[0] >= 0.1 and times[2] - times[1] >= 0.2
    assert of_kind(events, "llm_exchange")[0]["outcome"] == "accepted"


def test_persistent_500_falls_back_to_best(fault_server: FaultServer) -> None:
    fault_server.script.extend(["500"] * 3)
    strategy = make_strategy(make_space(), fault_server.url, backoff_retries=2)
    events, population = run(strategy, 3, FITNESS)
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["generation"] == 1 and fallback["reason"] == "server_error"
    assert "gave up after 3 tries" in fallback["detail"]
    assert len(of_kind(events, "llm_backoff")) == 2
    assert of_kind(events, "llm_exchange")[0]["outcome"] == "server_error"
    assert _gen(events, "llm_mean", 2)[0]["source"] == "llm"  # recovered next generation
    assert strategy.generation == 3


def test_hang_past_the_timeout_falls_back(fault_server: FaultServer) -> None:
    fault_server.script.extend(["hang"])
    strategy = make_strategy(make_space(), fault_server.url, timeout=0.5)
    run(strategy, 1, FITNESS)
    started = time.monotonic()
    events, _ = run(strategy, 2, FITNESS)
    assert time.monotonic() - started < 4
    (fallback,) = of_kind(events, "llm_fallback")
    assert fallback["reason"] == "timeout" and "0.5s" in fallback["detail"]
    assert fallback["mean_source"] == "best"
    assert _gen(events, "llm_mean", 2)[0]["source"] == "llm"


def test_connection_refused_falls_back_every_generation() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    strategy = make_strategy(make_space(), url)
    events, population = run(strategy, 3, FITNESS)
    (preflight,) = of_kind(events, "llm_preflight")
    assert preflight["ok"] is False and preflight["reason"] == "unreachable"
    fallbacks = of_kind(events, "llm_fallback")
    assert [(e["generation"], e["reason"]) for e in fallbacks] == [(1, "unreachable"),
                                                                   (2, "unreachable")]
    assert strategy.generation == 3 and len(population) == 3


@pytest.mark.parametrize("status", ["401", "403"])
def test_rejected_key_fails_at_start_up(fault_server: FaultServer, status: str) -> None:
    fault_server.always = status
    with pytest.raises(ConfigError) as info:
        make_strategy(make_space(), fault_server.url)
    message = str(info.value)
    assert message.startswith("llm.base_url:") and f"HTTP {status}" in message
    assert "OPENAI_API_KEY" in message and API_KEY not in message
    assert len(fault_server.requests) == 1  # the preflight, nothing more


def test_wrong_key_is_a_401_at_start_up(fault_server: FaultServer) -> None:
    with pytest.raises(ConfigError, match="refused the API key"):
        make_strategy(make_space(), fault_server.url, api_key="sk-wrong")


def test_api_key_never_reaches_events_state_or_logs(fault_server: FaultServer, tmp_path) -> None:
    """Write what the controller would store, plus a DEBUG log of everything, then grep."""
    fault_server.script.extend(["malformed", "429", "500", "ok", "hang", "out_of_range"])
    fault_server.retry_after = "0.1"
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        strategy = make_strategy(make_space(), fault_server.url, timeout=0.5, max_retries=1)
        events, _ = run(strategy, 4, FITNESS)
        with pytest.raises(ConfigError) as info:
            fault_server.always = "401"
            make_strategy(make_space(), fault_server.url)
        logging.getLogger("llm_evo").warning("start-up failed: %s", info.value)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events))
    (storage / "state.json").write_text(json.dumps(strategy.state_dict()))
    assert all(r["key_ok"] for r in fault_server.requests)  # the key was really used
    assert of_kind(events, "llm_fallback") and of_kind(events, "llm_backoff")
    assert log_file.stat().st_size > 0
    found = subprocess.run(["grep", "-r", "-F", "-l", API_KEY, str(tmp_path)],
                           capture_output=True, text=True)
    assert found.returncode == 1, f"API key found in {found.stdout}"
    assert API_KEY not in repr(strategy.__dict__.get("client"))
