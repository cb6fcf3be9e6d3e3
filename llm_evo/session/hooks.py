"""Per-candidate hooks: the parts of a search that act on its candidates without the search
loop knowing what they are (the loop calls every hook at the same points, in order).

Why: kinship-aware search and the data-driven start used to be branches inside the loop;
as hooks they are tested on their own and the loop stays one straight path.

The points, in the order the loop reaches them:
- `search_space(space)`: the space the strategy starts from (data init seeds it)
- `started(strategy)`: after the strategy's own start (data init records its weights as an
  event; kinship reads the models once)
- `before_generation(run_id, generation, genotypes, strategy)`: after `ask`, before the
  "asked" checkpoint; returns one value per candidate (or None) for `on_result`
- `on_result(rec, value)`: each finished evaluation, before it is recorded; returns the record
- `after_generation(run_id, generation, strategy)`: after `tell`, before the "told" checkpoint
- `summary(candidates)`: the hook's part of the end-of-run summary, keyed by its `name`
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_evo.kinship.penalty import KinshipPenalty, build_penalty

if TYPE_CHECKING:
    from llm_evo.config import RunConfig
    from llm_evo.genome import Genome, SearchSpace
    from llm_evo.storage import CandidateRecord, RunStorage
    from llm_evo.strategies.base import Strategy


def _no_echo(_message: str) -> None:
    """A hook says nothing on the terminal unless the CLI passes its echo."""


class SearchHook:
    """Every point is a no-op by default: a hook overrides only the ones it needs."""

    name = ""

    def search_space(self, space: SearchSpace) -> SearchSpace:
        return space

    def started(self, strategy: Strategy) -> None:
        pass

    def before_generation(self, run_id: int, generation: int, genotypes: Sequence[np.ndarray],
                          strategy: Strategy) -> list[Any] | None:
        return None

    def on_result(self, rec: CandidateRecord, value: Any) -> CandidateRecord:
        return rec

    def after_generation(self, run_id: int, generation: int, strategy: Strategy) -> None:
        pass

    def summary(self, candidates: Sequence[CandidateRecord]) -> dict[str, Any] | None:
        return None


def search_hooks(config: RunConfig, genome: Genome, storage: RunStorage, root: str | Path,
                 config_dir: Path | None = None,
                 echo: Callable[[str], None] = _no_echo) -> list[SearchHook]:
    """The hooks a run config asks for (cheap: each does its work from `started` on)."""
    hooks: list[SearchHook] = []
    if config.search.init == "data":
        hooks.append(DataInitHook(config, genome, config_dir, echo))
    if config.kinship.active:
        hooks.append(KinshipHook(config, genome, storage, root, echo))
    if config.search.objective == "pareto":
        from llm_evo.session.pareto import ParetoHook

        hooks.append(ParetoHook(config, storage, root))
    return hooks


class DataInitHook(SearchHook):
    """`search.init: data`: start where `llm-evo mix --example-data` would mix."""

    name = "init_data"

    def __init__(self, config: RunConfig, genome: Genome, config_dir: Path | None,
                 echo: Callable[[str], None] = _no_echo) -> None:
        self.search = config.search
        self.genome = genome
        self.config_dir = config_dir
        self.echo = echo
        self.init = None

    def search_space(self, space: SearchSpace) -> SearchSpace:
        from llm_evo.mix.seed import search_init_weights, seeded_space

        s, genome = self.search, self.genome
        self.init = search_init_weights(genome, s.example_data, s.temperature, self.config_dir)
        self.echo("search.init data: " + ", ".join(
            f"{label} {w:.3f} (loss {loss:.3f})" for label, w, loss in
            zip(genome.model_labels, self.init.weights, self.init.losses, strict=True)))
        return seeded_space(genome, self.init.weights)

    def started(self, strategy: Strategy) -> None:
        """Recorded in the ledger with the run's first events."""
        strategy.emit("init_data", **self.init.to_dict())


class KinshipHook(SearchHook):
    """Kinship-aware search: penalise inbred candidates, and let the strategy widen its search
    when the population has collapsed onto itself.

    Builds (or loads from the run's storage path) the statistics once per run, picks the
    reference set each generation, records raw score, kinship and penalised score per
    candidate, logs a `kinship_diversity` event per generation, and calls
    `Strategy.on_stagnation` when the population's kinship stays high.
    """

    name = "kinship"

    def __init__(self, config: RunConfig, genome: Genome, storage: RunStorage,
                 root: str | Path, echo: Callable[[str], None] = _no_echo) -> None:
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

    def started(self, strategy: Strategy) -> None:
        """Reads the models once (or the run's cache); a config it cannot serve fails here."""
        self.prepare()

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

    def before_generation(self, run_id: int, generation: int, genotypes: Sequence[np.ndarray],
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

    def on_result(self, rec: CandidateRecord, kinship: float | None) -> CandidateRecord:
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
