"""`llm-evo run --search llm` end to end: the real SmolLM2 server through the openai
client, Ray workers, mergekit and lm-eval on the tiny family. The transcript and the
accepted response format land in the run storage; the API key lands nowhere."""

from __future__ import annotations

import os
import sqlite3
import subprocess

import pytest

from tests.cli.helpers import cli
from tests.e2e_helpers import write_config

pytestmark = pytest.mark.slow

SECRET = "sk-llm-evo-test-0123456789abcdef-DO-NOT-LEAK"


def test_llm_strategy_run_stores_transcript_and_never_the_key(tmp_path, tiny_family,
                                                              llama_server):
    config = write_config(tmp_path, tiny_family, strategy="llm", population=4, generations=2,
                          limit=20, extra={"search": {"evaluate_parents": False},
                                           "llm": {"max_retries": 1, "max_tokens": 256}})
    storage = tmp_path / "run"
    env = {**os.environ, "OPENAI_API_KEY": SECRET}
    proc = cli("llm-evo", "run", str(config), "--storage-path", str(storage),
               "--llm-base-url", llama_server, "--llm-model", "smollm2", "--num-workers", "2",
               "--verbose", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    db = sqlite3.connect(storage / "llm_evo.sqlite")
    gens = db.execute("SELECT DISTINCT generation FROM candidates ORDER BY 1").fetchall()
    assert [g[0] for g in gens] == [0, 1]
    kinds = {k for (k,) in db.execute("SELECT kind FROM events")}
    assert {"llm_exchange", "sigma", "llm_response_format"} <= kinds
    exchanges = db.execute("SELECT generation, payload_json FROM events "
                           "WHERE kind='llm_exchange'").fetchall()
    assert exchanges and all(g >= 1 for g, _ in exchanges)
    assert all('"prompt"' in p and '"response"' in p for _, p in exchanges)
    fmt = db.execute("SELECT payload_json FROM events WHERE kind='llm_response_format'")
    assert any(mode in p for (p,) in fmt for mode in ("json_object", "json_schema", "text"))

    # the key is in no file of the storage path (ledger, log, config) and in no output
    grep = subprocess.run(["grep", "-r", "-a", "-l", SECRET, str(storage)],
                          capture_output=True, text=True)
    assert grep.stdout == "" and grep.returncode == 1
    assert SECRET not in proc.stdout and SECRET not in proc.stderr
