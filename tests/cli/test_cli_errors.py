"""Bad input: one line naming the field or file, exit code 2, never a traceback."""

from __future__ import annotations

import json
import time

import pytest

from tests.cli.helpers import assert_one_line_error, cli


@pytest.fixture()
def fake_models(tmp_path):
    """Model folders with only a config.json: enough for every check before loading."""
    paths = {}
    for name, layers in [("base", 8), ("ft_a", 8), ("ft_b", 8), ("odd", 6)]:
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(
            {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": layers}))
        paths[name] = d
    return paths


def write(tmp_path, text):
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    return path


def test_help_is_fast():
    started = time.perf_counter()
    proc = cli("llm-evo", "--help")
    assert proc.returncode == 0 and "run" in proc.stdout and "validate" in proc.stdout
    assert time.perf_counter() - started < 10


def test_malformed_yaml(tmp_path):
    path = write(tmp_path, "genome:\n  models: [a, b\n")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), str(path), "line")


def test_schema_error_names_field(tmp_path):
    path = write(tmp_path, "genome:\n  models: [a, b]\n  merge_method: average\ntasks: [t]\n")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "genome.merge_method")


def test_missing_config_file(tmp_path):
    assert_one_line_error(cli("llm-evo", "validate", str(tmp_path / "x.yml")), "not found")


def test_missing_local_model(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {tmp_path / 'gone'}]
  merge_method: linear
tasks: [t]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "genome.models[1]", "gone")


def test_hub_id_offline_is_a_clear_error(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, some-org/some-model-that-is-not-cached]
  merge_method: linear
tasks: [t]
""")
    env_proc = cli("llm-evo", "validate", str(path),
                   env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert_one_line_error(env_proc, "genome.models[1]", "Hugging Face Hub")


def test_layer_mismatch(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['odd']}]
  merge_method: linear
tasks: [t]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "genome.models[1]", "layers")


def test_granularity_must_divide(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
  layer_granularity: 3
tasks: [t]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "layer_granularity")


def test_benchmark_objective_refused(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
tasks: [mmlu]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path), "--skip-tasks"), "mmlu",
                          "--i-understand-the-depths-of-the-evils-i-am-unleashing")
    ok = cli("llm-evo", "validate", str(path), "--skip-tasks",
             "--i-understand-the-depths-of-the-evils-i-am-unleashing")
    assert ok.returncode == 0, ok.stderr


def test_unknown_task(tmp_path, fake_models):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
tasks: [no_such_task_anywhere]
evaluation:
  task_search_path: [{tasks}]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "tasks", "no_such_task_anywhere")


def test_bad_flag_value_is_exit_2(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
tasks: [t]
""")
    proc = cli("llm-evo", "run", str(path), "--storage-path", str(tmp_path / "s"),
               "--force-population-size", "1")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--force-population-size" in proc.stderr


def test_help_imports_no_heavy_package():
    import subprocess
    import sys

    code = ("import sys\nfrom llm_evo.cli import main\ntry:\n    main(['--help', 'x'])\n"
            "except SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'ray', 'lm_eval', 'mergekit', 'openai', 'cma') "
            "if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def _run_args(tmp_path, fake_models, *flags, extra=""):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
tasks: [t]
{extra}""")
    return cli("llm-evo", "run", str(path), "--storage-path", str(tmp_path / "s"), *flags)


@pytest.mark.parametrize("flags, needles", [
    (("--search", "cma", "--llm-model", "gpt-4o"), ("--llm-model", "--search llm")),
    (("--load-in-8bit", "--load-in-4bit"), ("--load-in-8bit and --load-in-4bit",)),
    (("--load-in-4bit", "--vllm"), ("--load-in-4bit", "HF backend only")),
    (("--load-in-8bit", "--in-memory"), ("--load-in-8bit", "--in-memory")),
])
def test_contradicting_parity_flags_are_one_line(tmp_path, fake_models, flags, needles):
    assert_one_line_error(_run_args(tmp_path, fake_models, *flags), *needles)


def test_llm_flag_against_the_configs_strategy(tmp_path, fake_models):
    proc = _run_args(tmp_path, fake_models, "--api-key", "sk-secret-123",
                     extra="search:\n  strategy: random\n")
    assert_one_line_error(proc, "--api-key", "search.strategy in the config")
    assert "sk-secret-123" not in proc.stderr


def test_load_in_8bit_without_bitsandbytes(tmp_path, fake_models):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed")
    assert_one_line_error(_run_args(tmp_path, fake_models, "--load-in-8bit"),
                          "--load-in-8bit needs bitsandbytes", "not installed")


@pytest.mark.parametrize("flags, needle", [
    (("--max-fevals", "0"), "--max-fevals"),
    (("--timeout", "0"), "--timeout"),
    (("--sigma0", "-1"), "--sigma0"),
])
def test_bad_parity_flag_values_are_exit_2(tmp_path, fake_models, flags, needle):
    proc = _run_args(tmp_path, fake_models, *flags)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and needle in proc.stderr


def test_model_references_validate(tmp_path, fake_models):
    """mergekit's ModelReference forms: a revision, a mapping, a base+LoRA."""
    lora = tmp_path / "adapter"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    path = write(tmp_path, f"""genome:
  models:
    - {{model: {{path: {fake_models['ft_a']}, revision: main}}}}
    - {fake_models['ft_b']}+{lora}
  merge_method: task_arithmetic
  base_model: {fake_models['base']}@main
tasks: [t]
""")
    proc = cli("llm-evo", "validate", str(path), "--skip-tasks")
    assert proc.returncode == 0, proc.stderr
    assert "models: ft_a@main, ft_b+adapter" in proc.stdout
    (lora / "adapter_config.json").unlink()
    assert_one_line_error(cli("llm-evo", "validate", str(path), "--skip-tasks"),
                          "genome.models[1]", "adapter_config.json")


def test_bad_model_reference_is_one_line(tmp_path, fake_models):
    path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, a@b@c]
  merge_method: linear
tasks: [t]
""")
    assert_one_line_error(cli("llm-evo", "validate", str(path)), "genome.models.1",
                          "more than one '@'")


@pytest.mark.parametrize("flags, extra, needles", [
    (("--search", "annealing"), "", ("search.strategy", "unknown strategy 'annealing'",
                                     "tpe", "nsga2")),
    (("--objective", "pareto", "--search", "nsga2"), "",
     ("search.objective: pareto needs at least two tasks", "lists 1")),
    (("--objective", "pareto", "--search", "cma"), "tasks: [t, u]\n",
     ("pareto needs a multi-objective strategy", "cma is not one", "nsga2")),
    ((), "tasks: [t, u]\nsearch:\n  objective: pareto\n  strategy: llm\n",
     ("llm is not one",)),
])
def test_bad_strategy_or_objective_is_one_line(tmp_path, fake_models, flags, extra, needles):
    """Before any model loads or Ray starts: `run` and `validate` refuse alike."""
    if extra.startswith("tasks:"):
        path = write(tmp_path, f"""genome:
  models: [{fake_models['ft_a']}, {fake_models['ft_b']}]
  merge_method: linear
{extra}""")
        proc = cli("llm-evo", "run", str(path), "--storage-path", str(tmp_path / "s"), *flags)
        assert_one_line_error(proc, *needles)
        if not flags:
            assert_one_line_error(cli("llm-evo", "validate", str(path), "--skip-tasks"),
                                  *needles)
    else:
        assert_one_line_error(_run_args(tmp_path, fake_models, *flags), *needles)
    assert not (tmp_path / "s" / "llm_evo.sqlite").exists()  # refused before any run
