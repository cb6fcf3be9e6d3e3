"""How `llm-evo run`'s mergekit-evolve / LLM-Evo-Merge flags combine with the config
(llm_evo.cli.run_flags), without starting a run."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import yaml

from llm_evo.cli.run_flags import (
    DEFAULT_WANDB_PROJECT,
    apply_budget,
    check_quantization,
    load_run_config,
    quantization,
)
from llm_evo.config import parse_config
from llm_evo.config.run import DEFAULT_STRATEGY
from llm_evo.errors import ConfigError

BASE = {"genome": {"models": ["a", "b"], "merge_method": "linear"}, "tasks": ["t"]}


def write(tmp_path, extra=None):
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump({**BASE, **(extra or {})}))
    return str(path)


@pytest.mark.parametrize("flag", ["llm_model", "api_key", "llm_base_url", "max_retries",
                                  "sigma_low", "sigma_high", "top_k", "llm_temperature"])
def test_an_llm_flag_selects_the_llm_strategy(tmp_path, flag):
    """LLM-Evo-Merge always searches with the LLM: its command lines carry no --search."""
    value = {"max_retries": 2, "top_k": 3, "sigma_low": 0.1, "sigma_high": 0.3,
             "llm_temperature": 0.0}.get(flag, "x")
    config, _, notes = load_run_config(write(tmp_path), {flag: value})
    assert config.search.strategy == "llm"
    assert notes == [f"search: llm (implied by --{flag.replace('_', '-')})"]
    plain, _, none = load_run_config(write(tmp_path), {})
    assert plain.search.strategy == DEFAULT_STRATEGY and none == []


def test_sigma0_selects_cma(tmp_path):
    """mergekit-evolve's --sigma0 is pycma's step size: with no strategy chosen it means CMA-ES,
    mergekit-evolve's only strategy, whatever our default is."""
    config, _, notes = load_run_config(write(tmp_path), {"sigma0": 0.3})
    assert (config.search.strategy, config.search.sigma0) == ("cma", 0.3)
    assert notes == ["search: cma (implied by --sigma0)"]
    with pytest.raises(ConfigError, match=r"^--sigma0 is a setting of the cma strategy, but "
                                          r"the search strategy is tpe \(--search\)"):
        load_run_config(write(tmp_path), {"sigma0": 0.3, "search_strategy": "tpe"})
    with pytest.raises(ConfigError, match=r"--llm-model is a setting of the llm strategy and "
                                          r"--sigma0 one of cma: choose one strategy"):
        load_run_config(write(tmp_path), {"sigma0": 0.3, "llm_model": "m"})


def test_llm_flags_agree_with_an_explicit_llm_strategy(tmp_path):
    path = write(tmp_path, {"search": {"strategy": "llm"}})
    config, _, notes = load_run_config(path, {"llm_model": "m"})
    assert config.search.strategy == "llm" and config.llm.model == "m" and notes == []


@pytest.mark.parametrize("where", ["flag", "config"])
def test_llm_flags_against_another_strategy_are_refused(tmp_path, where):
    extra = {"search": {"strategy": "random"}} if where == "config" else None
    flags = {"api_key": "sk-x", **({"search_strategy": "cma"} if where == "flag" else {})}
    with pytest.raises(ConfigError) as err:
        load_run_config(write(tmp_path, extra), flags)
    message = str(err.value)
    assert "--api-key" in message and "--search llm" in message and "\n" not in message
    assert ("--search" if where == "flag" else "search.strategy in the config") in message


def test_wandb_project_precedence(tmp_path, monkeypatch):
    """--wandb-project > wandb.project in the config > WANDB_PROJECT > llm-evo."""
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    plain = write(tmp_path)
    assert load_run_config(plain, {})[0].wandb.project == DEFAULT_WANDB_PROJECT
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert load_run_config(plain, {})[0].wandb.project == "from-env"
    (tmp_path / "p").mkdir()
    with_project = write(tmp_path / "p", {"wandb": {"project": "from-config"}})
    assert load_run_config(with_project, {})[0].wandb.project == "from-config"
    flagged = load_run_config(with_project, {"wandb_project": "from-flag"})[0]
    assert flagged.wandb.project == "from-flag"
    # where the run logs is not part of what the run is: resuming stays possible
    assert flagged.config_hash() == load_run_config(plain, {})[0].config_hash()


def test_no_halves_turn_config_settings_off(tmp_path):
    path = write(tmp_path, {"evaluation": {"in_memory": True, "backend": "vllm",
                                           "reshard": True}})
    on = load_run_config(path, {})[0].evaluation
    assert on.in_memory and on.backend == "vllm" and on.reshard
    off = load_run_config(path, {"in_memory": False, "use_vllm": False,
                                 "reshard": False})[0].evaluation
    assert not off.in_memory and off.backend == "hf" and not off.reshard


def test_mergekit_evolve_search_flags_map_to_the_config(tmp_path):
    config = load_run_config(write(tmp_path), {
        "max_fevals": 16, "sigma0": 1 / 6, "random_seed": 0, "force_population_size": 8,
        "batch_size": "4"})[0]
    s = config.search
    assert (s.max_fevals, s.sigma0, s.seed, s.population_size) == (16, 1 / 6, 0, 8)
    assert config.evaluation.batch_size == 4


def test_quantization_is_mergekit_evolves_bitsandbytes_config():
    assert quantization({}) is None
    assert quantization({"load_in_8bit": True}) == {"load_in_8bit": True, "load_in_4bit": False}
    four = quantization({"load_in_4bit": True})
    assert four == {"load_in_8bit": False, "load_in_4bit": True,
                    "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4",
                    "bnb_4bit_use_double_quant": True}
    with pytest.raises(ConfigError, match="choose one"):
        quantization({"load_in_8bit": True, "load_in_4bit": True})


def test_quantization_reaches_the_hf_model_args(tmp_path):
    config = load_run_config(write(tmp_path), {"load_in_8bit": True})[0]
    assert config.evaluation.model_args["quantization_config"]["load_in_8bit"] is True


@pytest.mark.parametrize("evaluation, message", [
    ({"backend": "vllm"}, "HF backend only"),
    ({"in_memory": True}, "--in-memory"),
])
def test_quantization_refuses_what_mergekit_evolve_refuses(tmp_path, evaluation, message):
    config = load_run_config(write(tmp_path, {"evaluation": evaluation}),
                             {"load_in_4bit": True})[0]
    with pytest.raises(ConfigError, match=message):
        check_quantization(config)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None,
                    reason="bitsandbytes is installed")
def test_quantization_without_bitsandbytes_is_one_clear_error(tmp_path):
    config = load_run_config(write(tmp_path), {"load_in_8bit": True})[0]
    with pytest.raises(ConfigError, match="--load-in-8bit needs bitsandbytes"):
        check_quantization(config)
    check_quantization(load_run_config(write(tmp_path), {})[0])  # nothing asked: no check


def test_the_budget_sets_the_generation_count(tmp_path):
    genome = SimpleNamespace(n_genes=12)  # default population: 4 + floor(3 ln 12) = 11
    path = write(tmp_path)
    config = load_run_config(path, {"max_fevals": 16, "force_population_size": 8})[0]
    assert apply_budget(config, path, {"max_fevals": 16}, genome).search.max_generations == 2
    default_pop = load_run_config(path, {"max_fevals": 100})[0]
    assert apply_budget(default_pop, path, {}, genome).search.max_generations == 10  # 100/11
    big = load_run_config(path, {"max_fevals": 1000})[0]
    assert apply_budget(big, path, {}, genome).search.max_generations == 91  # not capped at 10
    # an explicit generation count stays (and caps the budget in the controller)
    capped = load_run_config(path, {"max_fevals": 1000, "max_generation": 3})[0]
    assert apply_budget(capped, path, {"max_generation": 3}, genome).search.max_generations == 3
    (tmp_path / "g").mkdir()
    in_file = write(tmp_path / "g", {"search": {"max_generations": 4, "max_fevals": 1000}})
    cfg = load_run_config(in_file, {})[0]
    assert apply_budget(cfg, in_file, {}, genome).search.max_generations == 4
    assert apply_budget(parse_config(BASE), path, {}, genome) == parse_config(BASE)


def test_the_run_seed_seeds_every_merge(tmp_path):
    """mergekit-evolve passes --random-seed to MergeOptions.random_seed (DARE's masks)."""
    from llm_evo.evaluation.backends import merge_options
    from llm_evo.evaluation.spec import worker_spec

    config = load_run_config(write(tmp_path), {"random_seed": 11})[0]
    spec = worker_spec(config, task_search_paths=[], merge_dir=str(tmp_path / "merges"),
                       seed=config.search.seed, trust_remote_code=False, allow_crimes=False)
    options = merge_options(spec, cuda=False)
    assert options.random_seed == 11
    assert options.lora_merge_cache == str(tmp_path / "lora_merge_cache")


def test_reshard_refuses_a_lora_reference_up_front(tmp_path):
    from llm_evo.cli.run_flags import check_reshard

    genome = SimpleNamespace(models=["org/a", "org/b+org/adapter"], base_model="org/base")
    config = load_run_config(write(tmp_path), {"reshard": True})[0]
    with pytest.raises(ConfigError, match=r"genome.models\[1\]: --reshard .*--no-reshard"):
        check_reshard(config, genome)
    check_reshard(load_run_config(write(tmp_path), {})[0], genome)  # off: nothing to copy
    check_reshard(config, SimpleNamespace(models=["org/a@v2"], base_model=None))
