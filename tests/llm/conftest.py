"""Fixtures for the LLM strategy: the fault-injecting server (per test) and a real
llama.cpp server running SmolLM2-135M-Instruct (once per session)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from fault_server import FaultServer
from llm_helpers import API_KEY


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    server = FaultServer(api_key=API_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `python -m llama_cpp.server` serving SmolLM2 on a free loopback port.

    Installed by the [dev] extra, so a missing server fails the suite instead of skipping.
    One thread: on a shared 2-core machine two threads ran several times slower.
    """
    from llm_evo.local_llm import local_llm_server

    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    threads = int(os.environ.get("LLM_EVO_TEST_LLAMA_THREADS", "1"))
    with local_llm_server(log_path=log_path, n_ctx=2048, ready_timeout=120,
                          threads=threads) as url:
        yield url
