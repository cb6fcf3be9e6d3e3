"""Kinship-aware search: penalise inbred candidates, and widen the search when the population
has collapsed onto itself (model kinship, arXiv 2410.12613: merging close relatives saturates).

`KinshipPenalty` is pure: genotypes in, kinship and penalised scores out, from a
`CandidateKinship` model (exact Gram moments for linear / task_arithmetic / slerp, a
coordinate sketch for ties / dare_ties), so nothing is merged to measure kinship.
`KinshipSearch` is the controller's side: it builds (or loads from the run's storage) the
statistics once per run, picks the reference set each generation, records raw score,
kinship and penalised score per candidate, logs a `kinship_diversity` event per generation,
and calls `Strategy.on_stagnation` when the population's kinship stays high.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.config import KinshipConfig
from llm_evo.errors import InvalidGenotypeError

if TYPE_CHECKING:
    from llm_evo.config import RunConfig
    from llm_evo.genome import Genome
    from llm_evo.kinship.candidate import CandidateKinship
    from llm_evo.storage import CandidateRecord, RunStorage
    from llm_evo.strategies.base import Strategy

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


class KinshipSearch:
    """What the controller calls: once per run `start`, then per generation `assess`,
    `record` per result, and `after_generation`."""

    def __init__(self, config: RunConfig, genome: Genome, storage: RunStorage,
                 root: str | Path, echo: Callable[[str], None] = print) -> None:
        self.config = config.kinship
        self.genome = genome
        self.storage = storage
        self.root = Path(root)
        self.echo = echo
        self.penalty: KinshipPenalty | None = None
        self.facts: dict[str, Any] = {}
        self.seconds = 0.0
        self.assessed = 0
        self._diversity: dict[int, dict[str, Any] | None] = {}
        self._restored = False

    @classmethod
    def start(cls, config: RunConfig, genome: Genome, storage: RunStorage, root: str | Path,
              echo: Callable[[str], None] = print) -> KinshipSearch | None:
        """None when the config does not ask for kinship; else prepared (models read once)."""
        if not config.kinship.active:
            return None
        search = cls(config, genome, storage, root, echo)
        search.prepare()
        return search

    def prepare(self) -> None:
        self.penalty, self.facts = build_penalty(self.config, self.genome, self.root)
        f = self.facts
        how = ("loaded from the run's cache" if f["cached"] else
               f"from one read of {f['checkpoints_read']} checkpoints "
               f"({f['bytes_read'] / 1e6:.1f} MB of {f['file_bytes'] / 1e6:.1f} MB in files)")
        mode = "exact" if f["exact"] else f"sketch of {f['sketch_size']} coordinates"
        c = self.config
        self.echo(f"kinship: {c.metric} against the {c.against}, penalty {c.penalty:g} beyond "
                  f"{c.threshold:g} ({mode}); statistics of {f['tensors']} tensors {how} "
                  f"in {f['seconds']:.1f}s"
                  + ("" if f["cached"] else f" (the pass itself {f['pass_seconds']:.1f}s)"))

    # ---- per generation --------------------------------------------------------------------
    def _restore(self, run_id: int, generation: int) -> None:
        """Replay the stored diversity events before `generation`: the stagnation streak
        continues exactly where an interrupted run left it."""
        if self._restored:
            return
        self._restored = True
        self.storage.add_events(run_id, [{"kind": "kinship_gram", "generation": generation,
                                          **self.facts}])
        last: dict[int, dict[str, Any]] = {}
        for event in self.storage.events(run_id, kind="kinship_diversity"):
            g = event.get("generation")
            if isinstance(g, int) and g < generation and isinstance(event.get("mean"), float):
                last[g] = event
        for g in sorted(last):
            self.penalty.stagnant(last[g])

    def _reference(self, run_id: int, genotypes: Sequence[np.ndarray],
                   strategy: Strategy) -> list[np.ndarray]:
        against = self.config.against
        if against == "population":
            return []
        if against == "mean":
            mean = strategy.search_mean()
            if mean is None:
                mean = np.mean([np.asarray(g, dtype=np.float64) for g in genotypes], axis=0)
            return [np.asarray(mean, dtype=np.float64)]
        ok = [c for c in self.storage.candidates(run_id, kind="candidate")
              if c.status == "ok" and c.genotype is not None and c.raw_score is not None]
        ok.sort(key=lambda c: c.raw_score, reverse=True)
        return [np.asarray(c.genotype, dtype=np.float64) for c in ok[: self.config.elite_size]]

    def assess(self, run_id: int, generation: int, genotypes: Sequence[np.ndarray],
               strategy: Strategy) -> list[float | None]:
        """Each candidate's kinship to the reference set, before anything is merged."""
        self._restore(run_id, generation)
        started = time.perf_counter()
        reference = self._reference(run_id, genotypes, strategy)
        result = self.penalty.assess(genotypes, reference,
                                     population=self.config.against == "population")
        self.seconds += time.perf_counter() - started
        self.assessed += len(genotypes)
        self._diversity[generation] = result.diversity
        return result.kinship

    def record(self, rec: CandidateRecord, kinship: float | None) -> CandidateRecord:
        """raw_score = the task score, score = the penalised one the strategy is told."""
        if rec.status != "ok" or rec.score is None:
            return replace(rec, kinship=kinship)
        raw = rec.score
        return replace(rec, raw_score=raw, kinship=kinship,
                       score=self.penalty.penalised(raw, kinship))

    def after_generation(self, run_id: int, generation: int, strategy: Strategy) -> None:
        """Log the generation's diversity; on stagnation, let the strategy widen its search."""
        diversity = self._diversity.pop(generation, None)
        if diversity is not None:
            self.storage.add_events(run_id, [{"kind": "kinship_diversity",
                                              "generation": generation, **diversity}])
        if self.penalty.stagnant(diversity):
            c = self.config
            side = "below" if c.metric == "ed" else "above"
            strategy.on_stagnation(
                f"mean {c.metric} kinship {side} {c.stagnation:g} for "
                f"{c.stagnation_generations} generation(s)")

    # ---- end of run ------------------------------------------------------------------------
    def summary(self, candidates: Sequence[CandidateRecord]) -> dict[str, Any]:
        """Per-candidate kinship cost against the mean evaluation time of this run."""
        per = self.seconds / self.assessed if self.assessed else None
        times = [c.t_total for c in candidates if c.status == "ok" and c.t_total]
        evaluation = float(np.mean(times)) if times else None
        return {
            "metric": self.config.metric,
            "per_candidate_s": per,
            "eval_s": evaluation,
            "fraction": per / evaluation if per is not None and evaluation else None,
            "candidates": self.assessed,
            **{k: self.facts.get(k) for k in ("seconds", "pass_seconds", "bytes_read",
                                              "file_bytes",
                                              "cached", "exact", "sketch_size",
                                              "checkpoints_read")},
        }
