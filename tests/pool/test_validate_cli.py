"""`llm-evo validate` knows pool configs: schema, model folders and tasks, like a run config."""

from __future__ import annotations

import yaml

from tests.cli.helpers import assert_one_line_error, cli
from tests.pool.conftest import write_pool_config


def test_validate_accepts_a_pool_config(tmp_path, pool_models):
    path = write_pool_config(tmp_path, pool_models)
    proc = cli("llm-evo", "validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "OK (pool config)" in proc.stdout and "models: 4, top_k 3" in proc.stdout


def test_validate_names_a_missing_pool_model(tmp_path, pool_models):
    path = write_pool_config(tmp_path, pool_models)
    cfg = yaml.safe_load(path.read_text())
    cfg["pool"]["models"][1] = str(tmp_path / "no_such_model")
    path.write_text(yaml.safe_dump(cfg))
    proc = cli("llm-evo", "validate", str(path))
    assert_one_line_error(proc, "pool.models[1]", "no_such_model")
