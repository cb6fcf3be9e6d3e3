"""The LLM strategy on a data-flow genome (llm_evo/dataflow.py): the prompt describes the
path in words (its own system prompt, each example's path, slot labels), and the LLM's
answer drives the search. Real HTTP against our own OpenAI-compatible test server."""

from __future__ import annotations

import numpy as np
from fault_server import FaultServer
from llm_helpers import make_strategy, run

from llm_evo.config import GenomeConfig
from llm_evo.dataflow import DataFlowGenome

RAW = {"best_share": 0.0, "trust_region": False}


def dataflow_genome() -> DataFlowGenome:
    config = GenomeConfig(models=["org/model-a", "org/model-b"], merge_method="passthrough",
                          dataflow={"repeats": 1, "max_layers": 6})
    return DataFlowGenome(config, list(config.models), 4)


def test_the_prompt_describes_the_path_and_the_answer_is_used(fault_server: FaultServer
                                                              ) -> None:
    genome = dataflow_genome()
    space = genome.space
    cols = space.n_genes

    def answer(body: dict) -> dict:  # every slot on, every scale at its middle
        return {"thought": "use all", "mean_genome": [[100] * 8 + [50] * (cols - 8)]}

    fault_server.answer = answer
    # fitness: how many of model-b's layers run (the LLM is told nothing of this)
    strategy = make_strategy(space, fault_server.url, population_size=4, **RAW)
    run(strategy, 1, lambda x: float(sum(s.model == 1 for s, _ in genome.path(x)))
        if np.any(np.asarray(x)[:8] > 0) else -1.0)
    mean = strategy.ask()[0]
    body = fault_server.chat_requests()[-1]
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    assert "path of layers" in system and "weight, density" not in system
    assert "column 5: slot 5: model-b layer 1 / use" in user
    assert "(above 50: the layer runs)" in user
    assert "column 8: scale model-a->model-b (0 means 0.5, 100 means 1.5)" in user
    lines = [line.strip() for line in user.splitlines()]
    fitness = [i for i, line in enumerate(lines) if line.startswith("fitness ")]
    assert fitness and all(lines[i + 1].startswith("path: ") for i in fitness)  # one each
    assert all(lines[i + 1].endswith("layers)") or "invalid" in lines[i + 1] for i in fitness)
    # the LLM's mean: every slot on (8 layers, over max_layers 6: a failed candidate if
    # sampled as is), scales 1.0
    assert np.all(mean[:8] > 0.9) and np.allclose(mean[8:], 1.0)
    assert genome.describe_path(mean).startswith("invalid (the path runs 8 layers")


def test_describe_path_joins_runs_and_shows_scales() -> None:
    genome = dataflow_genome()
    x = np.full(genome.n_genes, -0.5)
    x[[0, 1, 2, 6, 7]] = 0.5  # model-a 0-2, then model-b 2-3
    x[8:] = [0.75, 1.25]  # a->b, b->a
    assert genome.describe_path(x) == "model-a 0-2 -> model-b 2-3 (x0.75) (5 layers)"
    x[:8] = -0.5
    assert genome.describe_path(x).startswith("invalid (the path is empty")
