"""The config schema: mergekit-evolve's fields accepted unchanged, errors named."""

from __future__ import annotations

import pytest
import yaml

from llm_evo.config import load_config, parse_config, with_overrides
from llm_evo.errors import ConfigError

MINIMAL = {
    "genome": {"models": ["a", "b"], "merge_method": "linear"},
    "tasks": ["task_one", {"name": "task_two", "weight": 0.5, "metric": "acc_norm,none"}],
}


def test_tasks_accept_strings_and_mappings():
    cfg = parse_config(MINIMAL)
    assert [t.name for t in cfg.tasks] == ["task_one", "task_two"]
    assert cfg.tasks[0].metric == "acc,none" and cfg.tasks[0].weight == 1.0
    assert cfg.tasks[1].metric == "acc_norm,none" and cfg.tasks[1].weight == 0.5


def test_mergekit_evolve_defaults():
    cfg = parse_config(MINIMAL)
    assert cfg.apply_chat_template is True and cfg.fewshot_as_multiturn is True
    assert cfg.genome.effective_normalize is True  # linear normalises by default
    ta = parse_config({**MINIMAL, "genome": {"models": ["a"], "merge_method": "task_arithmetic",
                                             "base_model": "b"}})
    assert ta.genome.effective_normalize is False


def test_config_is_frozen():
    cfg = parse_config(MINIMAL)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type
        cfg.limit = 3


@pytest.mark.parametrize(
    "genome, field",
    [
        ({"models": ["a"], "merge_method": "ties"}, "base_model"),
        ({"models": ["a"], "merge_method": "slerp"}, "slerp needs at least 2"),
        ({"models": ["a", "b", "c"], "merge_method": "slerp", "filters": ["mlp"]},
         "genome.filters"),
        ({"models": ["a@b@c", "b"], "merge_method": "linear"}, "genome.models.0"),
        ({"models": ["a", "b+c+d"], "merge_method": "linear"}, "genome.models.1"),
        ({"models": ["a", {"model": "b", "override_architecture": "X"}],
          "merge_method": "linear"}, "override_architecture"),
        ({"models": ["a", {"model": {"path": "b", "revison": "x"}}],
          "merge_method": "linear"}, "revison"),
        ({"models": ["a", {"lora": "b"}], "merge_method": "linear"}, "needs model"),
        ({"models": ["a", {"model": {"path": "a"}}], "merge_method": "linear"},
         "lists a model twice"),
        ({"models": ["a", "b"], "merge_method": "bogus"}, "genome.merge_method"),
        ({"models": [], "merge_method": "linear"}, "genome.models"),
        ({"models": ["a", "b"], "merge_method": "linear", "layer_granularity": -1},
         "genome.layer_granularity"),
        ({"models": ["a", "b"], "merge_method": "linear", "colour": "red"}, "genome.colour"),
    ],
)
def test_bad_genome_names_the_field(genome, field):
    with pytest.raises(ConfigError) as err:
        parse_config({"genome": genome, "tasks": ["t"]}, "cfg.yml")
    message = str(err.value)
    assert field in message and message.startswith("cfg.yml")
    assert "\n" not in message


def test_duplicate_tasks_rejected():
    with pytest.raises(ConfigError, match=r"t \(acc,none\) listed twice"):
        parse_config({**MINIMAL, "tasks": ["t", "t"]})
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config({**MINIMAL, "tasks": [{"name": "t", "metric": "m", "weight": 1},
                                           {"name": "t", "metric": "m", "weight": 2}]})


def test_one_task_on_two_metrics_is_valid_and_scored_apart():
    """mergekit-evolve accepts it; results are keyed name/metric, so both count."""
    from llm_evo.evaluation.jobs import TaskSpec
    from llm_evo.evaluation.scoring import weighted_score

    cfg = parse_config({**MINIMAL, "tasks": [{"name": "t", "metric": "acc,none"},
                                             {"name": "t", "metric": "acc_norm,none",
                                              "weight": 0.5}]})
    specs = tuple(TaskSpec(t.name, t.weight, t.metric) for t in cfg.tasks)
    score, per_task = weighted_score({"t": {"acc,none": 0.4, "acc_norm,none": 0.8}}, specs)
    assert per_task == {"t/acc,none": 0.4, "t/acc_norm,none": 0.8}
    assert score == pytest.approx(0.4 + 0.5 * 0.8)


REFERENCES = [
    "org/name",
    "org/name@v1.0",
    "org/base+org/adapter",
    "org/base@abc+org/adapter@def",
    "/abs/local/model",
    {"model": "org/name"},
    {"model": {"path": "org/name", "revision": "r2"}},
    {"model": {"path": "org/base"}, "lora": {"path": "org/ad", "revision": "x"}},
    {"model": "org/base@main", "lora": "org/ad"},
]


@pytest.mark.parametrize("ref", REFERENCES, ids=str)
def test_model_references_read_as_mergekit_reads_them(ref):
    """Every form mergekit's ModelReference.model_validate accepts, kept as its str()."""
    from mergekit.common import ModelReference

    cfg = parse_config({"genome": {"models": [ref, "other"], "merge_method": "task_arithmetic",
                                   "base_model": ref}, "tasks": ["t"]})
    expected = str(ModelReference.model_validate(ref))
    assert cfg.genome.models[0] == expected and cfg.genome.base_model == expected
    assert str(ModelReference.parse(cfg.genome.models[0])) == expected  # round trip
    # the stored config reads back to the same config
    assert parse_config(cfg.model_dump(mode="json")).config_hash() == cfg.config_hash()


def test_plain_model_strings_keep_their_hash():
    """Canonical forms leave plain paths alone, so existing runs keep resuming."""
    cfg = parse_config(MINIMAL)
    assert cfg.genome.models == ["a", "b"]


def test_max_fevals_is_a_positive_budget():
    cfg = parse_config({**MINIMAL, "search": {"max_fevals": 16}})
    assert cfg.search.max_fevals == 16 and parse_config(MINIMAL).search.max_fevals is None
    with pytest.raises(ConfigError, match="search.max_fevals"):
        parse_config({**MINIMAL, "search": {"max_fevals": 0}})


def test_generation_count_follows_the_budget():
    """ceil(max_fevals / population), as pycma's maxfevals; max_generations still caps."""
    from llm_evo.session.search_loop import generation_count

    cfg = parse_config({**MINIMAL, "search": {"max_fevals": 16, "max_generations": 100}})
    assert generation_count(cfg, 8) == 2
    assert generation_count(cfg, 6) == 3  # 18 evaluations: whole generations
    assert generation_count(cfg, 32) == 1
    capped = with_overrides(cfg, {"search.max_generations": 2})
    assert generation_count(capped, 4) == 2
    assert generation_count(parse_config(MINIMAL), 4) == 10


def test_load_config_reports_yaml_line(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("genome:\n  models: [a, b\ntasks: [t]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")


def test_overrides_revalidate():
    cfg = parse_config(MINIMAL)
    new = with_overrides(cfg, {"search.seed": 7, "search.max_generations": None})
    assert new.search.seed == 7 and new.search.max_generations == cfg.search.max_generations
    with pytest.raises(ConfigError, match="search.population_size"):
        with_overrides(cfg, {"search.population_size": 1})


def test_config_hash_tracks_content():
    a = parse_config(MINIMAL)
    b = parse_config(yaml.safe_load(yaml.safe_dump(MINIMAL)))
    c = with_overrides(a, {"search.seed": 1})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_reserved_sections_validate():
    cfg = parse_config({**MINIMAL, "llm": {"model": "m", "top_k": 3},
                        "kinship": {"metric": "pcc", "penalty": 0.5},
                        "wandb": {"enabled": True, "project": "p"}})
    assert cfg.kinship.metric == "pcc" and cfg.llm.top_k == 3
    with pytest.raises(ConfigError, match="kinship.metric"):
        parse_config({**MINIMAL, "kinship": {"metric": "cosine"}})


def test_hash_ignores_where_the_run_logs_and_which_port_the_llm_uses():
    a = parse_config(MINIMAL)
    b = with_overrides(a, {"wandb.enabled": True, "llm.base_url": "http://127.0.0.1:9/v1"})
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != with_overrides(a, {"llm.model": "other"}).config_hash()


def test_config_diff_names_changed_leaves():
    from llm_evo.config import config_diff

    a = parse_config(MINIMAL)
    b = with_overrides(a, {"search.max_generations": 3, "limit": 5})
    assert config_diff(a.identity(), b.identity()) == ["limit: null -> 5",
                                                       "search.max_generations: 10 -> 3"]


def test_a_run_stored_before_a_field_was_added_still_resumes():
    import json

    from llm_evo.config import resume_diff

    cfg = parse_config(MINIMAL)
    old = json.loads(cfg.canonical_json())
    del old["search"]["init"]  # as a run written before `search.init` existed
    assert resume_diff(json.dumps(old), cfg) == []
    changed = with_overrides(cfg, {"search.seed": 3})
    assert resume_diff(json.dumps(old), changed) == [f"search.seed: {cfg.search.seed} -> 3"]
