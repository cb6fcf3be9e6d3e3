"""The command line is the strategies' edge: it names the strategy, resolves OPENAI_BASE_URL
and OPENAI_API_KEY, and has the run call `start()` before Ray starts. An unknown strategy
and a rejected key each stop `llm-evo run` there, in one line with exit 2."""

from __future__ import annotations

import os

from tests.cli.helpers import assert_one_line_error, cli
from tests.e2e_helpers import write_config
from tests.llm.fault_server import FaultServer


def test_unknown_strategy_is_one_line(tmp_path, tiny_family):
    config = write_config(tmp_path, tiny_family, strategy="no_such_strategy")
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "s"))
    assert_one_line_error(proc, "search.strategy: unknown strategy 'no_such_strategy'",
                          "cma")


def test_rejected_key_stops_the_run_at_start(tmp_path, tiny_family):
    """The URL and key come from the environment, read by the CLI alone; the preflight
    is the only request, and the server's 401 is the run's one line."""
    server = FaultServer(api_key="sk-right").start()
    try:
        config = write_config(tmp_path, tiny_family, strategy="llm",
                              extra={"llm": {"model": "m"}})
        env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-wrong"}
        proc = cli("llm-evo", "run", str(config), "--storage-path", str(tmp_path / "s"),
                   env=env)
    finally:
        server.stop()
    assert_one_line_error(proc, "llm.base_url: http://127.0.0.1:", "refused the API key")
    assert "sk-wrong" not in proc.stderr + proc.stdout
    (request,) = server.requests
    assert request["preflight"] and request["key_ok"] is False
