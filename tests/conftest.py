"""Session fixtures shared by the whole suite: the tiny model family, built once.

The family is generated offline by scripts/make_tiny_family.py into the cache outside the
clone (~/.cache/llm-evo/tiny/<fingerprint>, linked at models/tiny) and reused while the
script's fingerprint is unchanged (the demo shares it). `make test` runs the suite on two
pytest-xdist processes: session fixtures are per process, so the family builders lock.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


def _load_script(name: str):
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_family() -> dict:
    """The tiny Llama family (base + skill fine-tunes + lm-eval tasks), built once.

    LLM_EVO_TINY_FAMILY may name an already-built family folder (with family.json).
    """
    existing = os.environ.get("LLM_EVO_TINY_FAMILY")
    if existing:
        import json

        return json.loads((Path(existing) / "family.json").read_text())
    builder = _load_script("make_tiny_family")
    return builder.build_linked(REPO / "models" / "tiny")


def pytest_collection_modifyitems(config, items):
    # Files with end-to-end (slow) tests first, each file's tests in their order: a long
    # file started last would leave one xdist process working alone at the end.
    slow_files = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: item.path not in slow_files)  # stable
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def smol_family() -> dict:
    """SmolLM2-135M and its fine-tunes on real MMLU skills, built once into the cache
    outside the clone (~/.cache/llm-evo/smol/<fingerprint>) and linked at models/smol."""
    builder = _load_script("make_smol_family")
    # The builder locks its build, not models/smol's link: xdist processes take its lock
    # around both.
    with builder._lock(builder.cache_root() / "smol" / ".link.lock"):
        return builder.build_family(REPO / "models" / "smol")


@pytest.fixture(scope="session")
def ray_head():
    """One `ray start` head for the session, which end-to-end runs join as they would on a
    cluster (`ray_head.env`: the environment a joining driver runs with). Each private
    cluster costs a run about 8 s of Ray start-up; a run on a private cluster stays covered
    (test_run_e2e's full run, the kill -9 of a driver and its cluster in the pool resume
    test, SIGINT, the Ray failure tests). Stopped by its own processes, never `ray stop`.

    Each pytest-xdist process has a head of its own, offering its share of the machine's
    cores, at most 2: a run on it starts one CPU worker per core offered (on 2 cores and 2
    processes, one), so no run pays a second worker's start-up (torch, transformers,
    lm-eval and mergekit imports: about 6 s of CPU) for cores the other process keeps busy,
    and a big machine does not give each run more workers (and resident models) than 2."""
    from tests.ray_helpers import start_head, stop_head

    processes = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    head = start_head(num_cpus=max(1, min(2, (os.cpu_count() or 1) // processes)))
    yield head
    stop_head(head.root)
