"""vLLM is optional and checked at start-up; `--reshard` copies inputs bit for bit."""

from __future__ import annotations

import importlib.util
import os

import pytest

from llm_evo.errors import ConfigError
from llm_evo.evaluation.jobs import TaskSpec, WorkerSpec
from tests.cli.helpers import assert_one_line_error, cli
from tests.e2e_helpers import TASKS, family_dir, write_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_fails_the_worker_set_before_ray_starts(tmp_path):
    import ray

    from llm_evo.evaluation.workers import WorkerOptions, WorkerSet

    spec = WorkerSpec(tasks=(TaskSpec(TASKS[0], 1.0, "acc,none"),), task_search_paths=(),
                      merge_dir=str(tmp_path), backend="vllm")
    was_up = ray.is_initialized()
    with pytest.raises(ConfigError, match="vllm"):
        WorkerSet(spec, WorkerOptions(num_workers=1)).start()
    assert ray.is_initialized() == was_up


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_is_one_line_at_cli_start_up(tmp_path, tiny_family):
    path = write_config(tmp_path, tiny_family, generations=1, population=2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = cli("llm-evo", "run", str(path), "--storage-path", str(tmp_path / "s"), "--vllm",
               "--in-memory", "--quiet", env=env, timeout=300)
    assert_one_line_error(proc, "vllm", "pip install")
    assert not (tmp_path / "s" / "runs.sqlite").exists()


@pytest.mark.slow
def test_reshard_copies_tensors_exactly_and_once(tiny_family, tmp_path):
    from mergekit.io.lazy_tensor_loader import LazyTensorLoader
    from safetensors.torch import load_file

    from llm_evo.evaluation.backends import localize
    from llm_evo.evaluation.reshard import DONE_MARKER, reshard_models

    root = family_dir(tiny_family)
    refs = [str(root / "base"), str(root / "ft_arith")]
    mapping = reshard_models(refs, tmp_path / "input_models", shard_size=1_000_000)
    for ref in refs:
        dest = mapping[ref]
        assert os.path.isfile(os.path.join(dest, "config.json"))
        assert os.path.isfile(os.path.join(dest, "tokenizer.json"))
        shards = [f for f in os.listdir(dest) if f.endswith(".safetensors")]
        assert len(shards) > 1  # 5.5 MB of weights in shards of at most 1 MB
        original = load_file(os.path.join(ref, "model.safetensors"))
        copy = LazyTensorLoader.from_disk(dest)
        assert set(copy.index.tensor_paths) == set(original)
        for name, tensor in original.items():
            got = copy.get_tensor(name)
            assert got.dtype == tensor.dtype and bool((got == tensor).all()), name
    stamp = os.path.getmtime(os.path.join(mapping[refs[0]], DONE_MARKER))
    assert reshard_models(refs, tmp_path / "input_models") == mapping  # reused, not redone
    assert os.path.getmtime(os.path.join(mapping[refs[0]], DONE_MARKER)) == stamp
    cfg = {"merge_method": "linear", "base_model": refs[0],
           "models": [{"model": refs[1], "parameters": {"weight": 1.0}}], "dtype": "float32"}
    assert localize(cfg, mapping) == {
        "merge_method": "linear", "base_model": mapping[refs[0]],
        "models": [{"model": mapping[refs[1]], "parameters": {"weight": 1.0}}],
        "dtype": "float32"}
