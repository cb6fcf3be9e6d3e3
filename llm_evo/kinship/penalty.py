"""The kinship penalty: how inbred a candidate is, what score the search sees, and when a
population has collapsed onto itself (model kinship, arXiv 2410.12613: merging close
relatives saturates).

Pure math over a `CandidateKinship` model (exact Gram moments for linear / task_arithmetic /
slerp, a coordinate sketch for ties / dare_ties), so nothing is merged to measure kinship;
`build_penalty` reads the models once (or loads their statistics from a cache file). No
ledger and no strategy here: the search loop's side (reference sets, recording, stagnation
events) is `llm_evo.session.hooks.KinshipHook`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.config import KinshipConfig
from llm_evo.errors import InvalidGenotypeError

if TYPE_CHECKING:
    from llm_evo.genome import Genome
    from llm_evo.kinship.candidate import CandidateKinship

CACHE_FILE = "kinship_gram.npz"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json")


def excess(metric: str, kinship: float | None, threshold: float) -> float:
    """How far a kinship is on the inbred side of the threshold (ed: closer than it)."""
    if kinship is None or not math.isfinite(kinship):
        return 0.0
    gap = threshold - kinship if metric == "ed" else kinship - threshold
    return max(0.0, gap)


@dataclass
class Assessment:
    """Kinship of each candidate to the reference set, and the population's pairwise spread."""

    kinship: list[float | None]
    diversity: dict[str, Any] | None


class KinshipPenalty:
    """Kinship of candidates to a reference set, penalised scores, and the stagnation monitor."""

    def __init__(self, config: KinshipConfig, model: CandidateKinship) -> None:
        self.config = config
        self.model = model
        self.metric = config.metric
        self._streak = 0

    def _valid(self, genotype: np.ndarray) -> bool:
        try:
            self.model.genome.check(genotype)
        except InvalidGenotypeError:
            return False
        return True

    def assess(self, genotypes: Sequence[np.ndarray], reference: Sequence[np.ndarray] = (),
               population: bool = False) -> Assessment:
        """Mean kinship of each candidate to `reference` (to the other candidates with
        population=True), and the mean / min / max pairwise kinship of the candidates.

        Invalid genotypes (the merge would fail) get None and are left out of the statistics.
        """
        cands = [np.asarray(g, dtype=np.float64) for g in genotypes]
        ok = [i for i, g in enumerate(cands) if self._valid(g)]
        refs = [] if population else [np.asarray(r, dtype=np.float64) for r in reference
                                      if self._valid(np.asarray(r, dtype=np.float64))]
        out: list[float | None] = [None] * len(cands)
        if not ok:
            return Assessment(out, None)
        matrix = self.model.matrix(self.metric, [cands[i] for i in ok] + refs)
        k = len(ok)
        pairs = matrix[:k, :k][np.triu_indices(k, 1)]
        pairs = pairs[np.isfinite(pairs)]
        diversity = None
        if pairs.size:
            diversity = {"mean": float(pairs.mean()), "min": float(pairs.min()),
                         "max": float(pairs.max()), "metric": self.metric,
                         "candidates": k}
        for row, i in enumerate(ok):
            values = (np.delete(matrix[row, :k], row) if population else matrix[row, k:])
            values = values[np.isfinite(values)]
            if values.size:
                out[i] = float(values.mean())
        return Assessment(out, diversity)

    def penalised(self, raw: float, kinship: float | None) -> float:
        """What the search sees: raw - penalty * excess (the raw score when penalty is 0)."""
        if self.config.penalty == 0:
            return raw
        return raw - self.config.penalty * excess(self.metric, kinship, self.config.threshold)

    def stagnant(self, diversity: dict[str, Any] | None) -> bool:
        """Count generations whose mean kinship is beyond `stagnation`; True (and reset) at G."""
        limit = self.config.stagnation
        if limit is None or diversity is None:
            self._streak = 0
            return False
        mean = diversity["mean"]
        beyond = mean < limit if self.metric == "ed" else mean > limit
        self._streak = self._streak + 1 if beyond else 0
        if self._streak >= self.config.stagnation_generations:
            self._streak = 0
            return True
        return False


def _files_fingerprint(paths: Sequence[str]) -> list[list]:
    """Name, size and mtime of every weight/config file: a changed checkpoint is a new key."""
    out = []
    for p in paths:
        path = Path(p)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
                st = f.stat()
                out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def cache_key(genome: Genome, names: Sequence[str], sketch_size: int, ranks: bool) -> str:
    """The statistics depend on the checkpoints, the tensors compared and the sketch only."""
    from llm_evo.kinship.candidate import CACHE_VERSION

    blob = json.dumps({
        "version": CACHE_VERSION, "base": genome.base_model, "models": genome.models,
        "files": _files_fingerprint([genome.base_model, *genome.models]),
        "tensors": list(names), "sketch": sketch_size, "ranks": ranks,
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_penalty(config: KinshipConfig, genome: Genome, cache_dir: str | Path | None = None,
                  progress: Callable[[int, int, str], None] | None = None
                  ) -> tuple[KinshipPenalty, dict[str, Any]]:
    """Read the models once (or load the cached statistics) and return the penalty with the
    build facts: seconds, bytes read, file bytes, tensors, cached."""
    from llm_evo.errors import ConfigError
    from llm_evo.kinship.candidate import (
        DeltaStats,
        build_delta_stats,
        candidate_kinship,
        needs_sketch,
    )
    from llm_evo.kinship.layout import tensor_slots

    method = genome.definition.merge_method
    if not genome.base_model:
        raise ConfigError(
            f"kinship: merge_method {method} needs genome.base_model to measure kinship "
            "(deltas are taken against the base)")
    if genome.definition.smooth and method not in ("linear", "task_arithmetic", "ties",
                                                   "dare_ties"):
        raise ConfigError(f"kinship: genome.smooth is not supported with {method}")
    started = time.perf_counter()
    slots = tensor_slots(genome)
    sketch = config.sketch_size if needs_sketch(method) else 0
    ranks = method == "ties"
    key = cache_key(genome, [s.name for s in slots], sketch, ranks)
    path = Path(cache_dir) / CACHE_FILE if cache_dir is not None else None
    stats = DeltaStats.load(path, key) if path is not None and path.is_file() else None
    if stats is None:
        stats = build_delta_stats(genome.models, genome.base_model, slots, sketch_size=sketch,
                                  sketch_ranks=ranks, progress=progress)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            stats.save(path, key)
    model = candidate_kinship(genome, slots, stats)
    facts = {
        "seconds": time.perf_counter() - started,
        "pass_seconds": stats.elapsed_s,
        "bytes_read": stats.bytes_read,
        "file_bytes": stats.file_bytes,
        "tensors": len(stats.names),
        "skipped": list(stats.skipped),
        "cached": bool(stats.meta.get("cached")),
        "checkpoints_read": int(stats.meta.get("models_read", 0)),
        "exact": bool(model.exact),
        "sketch_size": int(stats.sketch.size) if stats.sketch is not None else 0,
        "blocks": model.n_blocks,
    }
    return KinshipPenalty(config, model), facts
