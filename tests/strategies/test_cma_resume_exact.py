"""A CMA-ES run resumed in another process, with another BLAS thread count, proposes the
same genotypes bit for bit as the uninterrupted run.

Two real causes of drift are covered, each by the genome that exposes it:

- 4 genes (the tiny family's genome): pycma finds its samples in an archive keyed by
  Python's per-process salted hash; after a restore it misses them and used to "repair"
  the ones beyond a Mahalanobis radius, which the uninterrupted run never does.
- 256 genes (e.g. 4 models x 32 layers, weight and density): the BLAS inside pycma's
  eigendecomposition sums in another order with two threads than with one.
- population 4: pycma injects a mirrored sample into the next generation and finds it at
  `tell` in another hash-keyed archive, which the restore re-keys.

One process runs the search uninterrupted (1 BLAS thread, one hash salt) and saves the
strategy's state after every `ask`, the checkpoint the controller writes before any
evaluation. A second process (2 BLAS threads, another salt) restores each of those
states, tells the generation and runs to the end; every genotype must equal the
reference's `.tobytes()`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_evo.strategies import make_strategy
from tests.strategies.test_strategy_contract import drive, space

ROOT = Path(__file__).resolve().parents[2]
GENERATIONS = 10

CHILD = r"""
import json, sys
import numpy as np
from threadpoolctl import threadpool_info
from llm_evo.config import GenomeConfig
from llm_evo.genome import Genome
from llm_evo.strategies import make_strategy

mode, models, method, layers, granularity, seed, popsize, gens, path = sys.argv[1:10]
names = [f"m{i}" for i in range(int(models))]
cfg = GenomeConfig(models=names, merge_method=method, base_model="base",
                   layer_granularity=int(granularity))
space = Genome(cfg, names, "base", int(layers)).space
target = np.linspace(0.1, 0.9, space.n_genes)

def fitness(x):
    return float(-np.sum((x - target) ** 2) + 0.05 * np.sin(9 * x).sum())

def drive(s, start):
    out = []
    for _ in range(start, int(gens)):
        xs = s.ask()
        out.append([x.tobytes().hex() for x in xs])
        s.tell(xs, [fitness(x) for x in xs])
    return out

threads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
if mode == "reference":
    s = make_strategy("cma", space, seed=int(seed), population_size=int(popsize))
    states, gens_hex = [], []
    for g in range(int(gens)):
        xs = s.ask()
        states.append(json.dumps(s.state_dict()))  # the "asked" checkpoint
        gens_hex.append([x.tobytes().hex() for x in xs])
        s.tell(xs, [fitness(x) for x in xs])
    json.dump({"threads": threads, "states": states, "genotypes": gens_hex}, open(path, "w"))
else:
    states = json.load(open(path))["states"]
    resumed = []
    for g, state in enumerate(states):
        s = make_strategy("cma", space, seed=999, population_size=int(popsize))
        s.load_state_dict(json.loads(state))
        resumed.append(drive(s, g))
    print(json.dumps({"threads": threads, "resumed": resumed}))
"""


def child(mode: str, genome: tuple, path: Path, *, threads: int, hash_seed: int):
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(ROOT),
           "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    args = [mode, *map(str, genome), str(GENERATIONS), str(path)]
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.parametrize("genome", [
    (2, "task_arithmetic", 8, 4, 42, 8),  # 4 genes: the archive miss and its repair
    (4, "ties", 32, 1, 7, 8),             # 256 genes: BLAS threads in the eigendecomposition
    (3, "task_arithmetic", 8, 4, 11, 4),  # population 4: pycma's injected mirrors
], ids=["4-genes", "256-genes", "mirrors"])
def test_resume_in_another_process_with_other_blas_threads_is_bit_identical(genome, tmp_path):
    ref_file = tmp_path / "reference.json"
    child("reference", genome, ref_file, threads=1, hash_seed=1)
    reference = json.loads(ref_file.read_text())
    got = json.loads(child("resume", genome, ref_file, threads=2, hash_seed=2))
    assert reference["threads"] == 1
    if (os.cpu_count() or 1) >= 2:  # OpenBLAS never runs more threads than cores
        assert got["threads"] == 2
    expected = reference["genotypes"]
    for g, run in enumerate(got["resumed"]):
        for k, (mine, theirs) in enumerate(zip(run, expected[g:], strict=True)):
            assert mine == theirs, (
                f"resumed at generation {g}: generation {g + k} differs from the "
                "uninterrupted run")


def test_a_restart_after_a_resume_draws_the_same_noise_as_without_one():
    """Each restart seeds its noise with the number of restarts so far (kinship stagnation
    restarts CMA-ES), so that number must travel in the state."""
    full = make_strategy("cma", space(), seed=3, population_size=4)
    drive(full, 1)
    full.on_stagnation("test")
    drive(full, 1)
    state = json.loads(json.dumps(full.state_dict()))
    full.on_stagnation("test")
    expected = [x.tobytes() for x in full.ask()]

    resumed = make_strategy("cma", space(), seed=3, population_size=4)
    resumed.load_state_dict(state)
    resumed.on_stagnation("test")
    assert [x.tobytes() for x in resumed.ask()] == expected
