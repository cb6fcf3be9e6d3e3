"""Weights & Biases logging, read from the run ledger.

The search loop calls `log_generation` after a generation is recorded; everything logged is
computed from `RunStorage`, never from the loop's memory, so a resumed run logs exactly
what a fresh one would and a tracker can be pointed at any stored run. wandb is imported
lazily (keeps `llm-evo --help` fast and runs without W&B free of its import cost).

Secrets: the W&B config is the run config (which has no key fields), and W&B's own metadata
collection is switched off because it records the command line, where `--api-key` may be.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_evo.config import RunConfig, WandbConfig
from llm_evo.errors import ConfigError
from llm_evo.genome import Genome
from llm_evo.storage import CandidateRecord, RunStorage

log = logging.getLogger(__name__)

WANDB_RUN_EVENT = "wandb_run"
DEFAULT_PROJECT = "llm-evo"
THOUGHT_COLUMNS = ["generation", "attempt", "outcome", "thought"]
GENOME_COLUMNS = ["gene", "axis", "value"]


def _ok(cands: list[CandidateRecord]) -> list[CandidateRecord]:
    return [c for c in cands if c.status == "ok" and c.raw_score is not None]


def _stats(values: list[float]) -> tuple[float, float]:
    """Population mean and (population) standard deviation."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _metric_stats(ok: list[CandidateRecord]) -> dict[str, tuple[float, float, float]]:
    """(mean, min, max) of each numeric per-task metric (`task/metric` keys) over `ok`."""
    out = {}
    for key in sorted({k for c in ok for k in (c.results or {})}):
        values = [float(c.results[key]) for c in ok
                  if isinstance((c.results or {}).get(key), (int, float))]
        if values:
            out[key] = (sum(values) / len(values), min(values), max(values))
    return out


def generation_metrics(storage: RunStorage, run_id: int, generation: int) -> dict[str, Any]:
    """Everything `log_generation` logs as scalars for one generation (pure storage reads).

    Keys: score/best_so_far (raw task score, as `best_config.yaml` is chosen),
    score/generation_best, score/mean, score/std (the fitness the strategy was told, i.e.
    after any kinship penalty), metrics/<task>/<metric>/{mean,min,max}, candidates/evaluated,
    candidates/failed, screening/{fully_scored,estimated,estimate_max} in a screened run,
    kinship/{mean,min} when a `kinship_diversity` event exists,
    strategy/sigma when a `sigma` event exists, and mergekit-evolve's own keys
    (`mergekit_evolve_metrics`).
    """
    cands = storage.candidates(run_id, kind="candidate")
    upto = _ok([c for c in cands if c.generation <= generation])
    gen = [c for c in cands if c.generation == generation]
    ok = _ok(gen)
    stats = _metric_stats(ok)
    out: dict[str, Any] = {
        "candidates/evaluated": len(gen),
        "candidates/failed": sum(c.status == "failed" for c in gen),
    }
    estimated = [c for c in gen if c.status == "estimated"]
    if estimated or any(e.get("generation") == generation
                        for e in storage.events(run_id, kind="screening")):
        # evaluation.screening: only `ok` candidates were fully scored; the rest are estimates
        out["screening/fully_scored"] = len(ok)
        out["screening/estimated"] = len(estimated)
        if estimated:
            out["screening/estimate_max"] = max(c.raw_score for c in estimated)
    if upto:
        out["score/best_so_far"] = max(c.raw_score for c in upto)
    if ok:
        out["score/generation_best"] = max(c.raw_score for c in ok)
        fitness = [c.score if c.score is not None else c.raw_score for c in ok]
        out["score/mean"], out["score/std"] = _stats(fitness)
        for key, (mean, low, high) in stats.items():
            out.update({f"metrics/{key}/mean": mean, f"metrics/{key}/min": low,
                        f"metrics/{key}/max": high})
    for event in storage.events(run_id, kind="kinship_diversity"):
        if event.get("generation") == generation:
            for stat in ("mean", "min"):
                if isinstance(event.get(stat), (int, float)):
                    out[f"kinship/{stat}"] = float(event[stat])
    for event in storage.events(run_id, kind="sigma"):
        if event.get("generation") == generation and isinstance(event.get("sigma"), (int, float)):
            out["strategy/sigma"] = float(event["sigma"])
    evaluated = sum(c.generation <= generation for c in cands)
    out.update(mergekit_evolve_metrics(evaluated, upto, ok, stats))
    return out


def mergekit_evolve_metrics(evaluated: int, ok_upto: list[CandidateRecord],
                            ok: list[CandidateRecord],
                            stats: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """The keys mergekit-evolve logs, so a dashboard built for it shows our runs too.

    best_score, evaluations (candidates so far), population/score_mean and _std (raw
    scores), and population/<task>_<metric>_{mean,max,min} (",none" dropped from the
    metric, as there). mergekit-evolve logs them at step = evaluations; we log at step =
    generation, with `evaluations` a metric a chart can use as its x-axis.
    """
    out: dict[str, Any] = {"evaluations": evaluated}
    if ok_upto:
        out["best_score"] = max(c.raw_score for c in ok_upto)
    if ok:
        out["population/score_mean"], out["population/score_std"] = _stats(
            [c.raw_score for c in ok])
    for key, (mean, low, high) in stats.items():
        task, _, metric = key.partition("/")
        name = f"population/{task}_{metric.replace(',none', '')}"
        out.update({f"{name}_mean": mean, f"{name}_max": high, f"{name}_min": low})
    return out


def thought_rows(storage: RunStorage, run_id: int, generation: int) -> list[list[Any]]:
    """(generation, attempt, outcome, thought) of every LLM exchange up to `generation`."""
    rows = []
    for e in storage.events(run_id, kind="llm_exchange"):
        g = e.get("generation")
        if g is None or g > generation:
            continue
        rows.append([g, e.get("attempt"), e.get("outcome") or "", e.get("thought") or ""])
    return rows


def genome_rows(best: CandidateRecord, genome: Genome | None) -> list[list[Any]]:
    """(gene index, axis label, value) of a genotype; labels come from the genome's axes."""
    genotype = best.genotype or []
    axes = genome.space.axes if genome is not None else ()
    rows = []
    for i, value in enumerate(genotype):
        label = axes[i].label if i < len(axes) else f"gene {i}"
        rows.append([i, label, float(value)])
    return rows


def front_rows(storage: RunStorage, run_id: int, config: RunConfig
               ) -> tuple[list[str], list[list[Any]]] | None:
    """(columns, rows) of the run's Pareto front as the ledger holds it, or None when the
    run does not search one: a member's slot, each task's metric and its weighted score."""
    if config.search.objective != "pareto":
        return None
    keys = [f"{t.name}/{t.metric}" for t in config.tasks]
    rows = [[c.generation, c.idx, *((c.results or {}).get(k) for k in keys), c.raw_score]
            for c in storage.front(run_id)]
    return ["generation", "idx", *keys, "score"], rows


def _best_upto(storage: RunStorage, run_id: int, generation: int) -> CandidateRecord | None:
    ok = _ok([c for c in storage.candidates(run_id, kind="candidate")
              if c.generation <= generation])
    return max(ok, key=lambda c: c.raw_score, default=None)


def recorded_wandb_id(storage: RunStorage, run_id: int) -> str | None:
    """The W&B run id a previous process recorded for this stored run (the last one wins)."""
    ids = [e.get("id") for e in storage.events(run_id, kind=WANDB_RUN_EVENT) if e.get("id")]
    return str(ids[-1]) if ids else None


class WandbTracker:
    """Logs one stored run to one W&B run; a resumed stored run continues the same W&B run."""

    def __init__(self, cfg: WandbConfig, storage: RunStorage, run_id: int, config: RunConfig,
                 genome: Genome | None = None):
        self.cfg = cfg
        self.storage = storage
        self.run_id = run_id
        self.config = config
        self.genome = genome
        self.run: Any = None
        self.resumed = False
        self._n_thoughts = 0
        self._best_key: tuple[int, int] | None = None
        self._parents_logged = 0
        self._front: list[list[Any]] | None = None  # the Pareto front last logged

    @property
    def wandb_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def start(self) -> None:
        """wandb.init: continue the W&B run recorded for this run, or create and record one."""
        import wandb

        previous = recorded_wandb_id(self.storage, self.run_id)
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "project": cfg.project or DEFAULT_PROJECT,
            "entity": cfg.entity,
            "name": cfg.name,
            "group": cfg.group,
            "tags": list(cfg.tags) or None,
            "notes": cfg.notes,
            "config": self.config.model_dump(mode="json"),
            # W&B's metadata holds the command line (maybe `--api-key ...`) and git state.
            "settings": wandb.Settings(x_disable_meta=True, disable_git=True, save_code=False),
        }
        if cfg.mode is not None:
            kwargs["mode"] = cfg.mode
        # Next to the ledger rather than in whatever folder the user launched from. Passed
        # explicitly because wandb reads WANDB_DIR once per process, at its first init.
        kwargs["dir"] = os.environ.get("WANDB_DIR") or str(self.storage.root)
        if previous is not None:
            kwargs.update(id=previous, resume="allow")
        self.run = wandb.init(**kwargs)
        self.resumed = previous is not None
        if previous is None:
            self.storage.add_events(
                self.run_id, [{"kind": WANDB_RUN_EVENT, "generation": None, "id": self.run.id}]
            )
        self._log_parents()

    def _require_run(self) -> None:
        if self.run is None:
            raise RuntimeError("WandbTracker.start() must be called before logging")

    def _log_parents(self) -> None:
        """Parent scores go to the summary: they are reference lines, not a time series."""
        parents = [p for p in self.storage.candidates(self.run_id, kind="parent")
                   if p.status == "ok" and p.raw_score is not None]
        if len(parents) == self._parents_logged:
            return
        self._parents_logged = len(parents)
        summary: dict[str, Any] = {}
        for p in parents:
            name = p.label or f"parent{p.idx}"
            summary[f"parents/{name}/score"] = p.raw_score
            summary.update({f"parents/{name}/{k}": v for k, v in (p.results or {}).items()})
        self.run.summary.update(summary)

    def log_generation(self, generation: int) -> None:
        """Log one recorded generation at step = generation (reads storage only)."""
        import wandb

        self._require_run()
        self._log_parents()  # parents may finish after start() on a pipelined scheduler
        data: dict[str, Any] = generation_metrics(self.storage, self.run_id, generation)
        rows = thought_rows(self.storage, self.run_id, generation)
        if len(rows) != self._n_thoughts:
            # Cumulative, so the newest table version holds the whole conversation.
            data["llm/thoughts"] = wandb.Table(columns=THOUGHT_COLUMNS, data=rows)
            self._n_thoughts = len(rows)
        best = _best_upto(self.storage, self.run_id, generation)
        if best is not None and (best.generation, best.idx) != self._best_key:
            data["best/genome"] = wandb.Table(columns=GENOME_COLUMNS,
                                              data=genome_rows(best, self.genome))
            self._best_key = (best.generation, best.idx)
        front = front_rows(self.storage, self.run_id, self.config)
        if front is not None and front[1] != self._front:
            data["pareto/front"] = wandb.Table(columns=front[0], data=front[1])
            self._front = front[1]
        self.run.log(data, step=generation)
        if best is not None:
            self.run.summary.update({
                "best/score": best.raw_score,
                "best/generation": best.generation,
                "best/idx": best.idx,
                **{f"best/{k}": v for k, v in (best.results or {}).items()},
                **self._best_path(best),
            })

    def _best_path(self, best: CandidateRecord) -> dict[str, str]:
        """A data-flow run's best path in words (which layer of which model runs where)."""
        if self.genome is None or not self.genome.is_dataflow or not best.genotype:
            return {}
        return {"best/path": self.genome.describe_path(best.genotype)}

    def finish(self, best_config_path: Path | None, status: str) -> None:
        """Attach best_config.yaml as an artifact, record the status, close the W&B run."""
        import wandb

        if self.run is None:
            return
        try:
            self.run.summary["status"] = status
            if best_config_path is not None and Path(best_config_path).is_file():
                artifact = wandb.Artifact(f"best-config-{self.run.id}", type="merge-config",
                                          metadata={"status": status, "run_id": self.run_id})
                artifact.add_file(str(best_config_path), name="best_config.yaml")
                self.run.log_artifact(artifact)
        finally:
            self.run.finish(exit_code=0 if status == "finished" else 1)
            self.run = None


def _apply_overrides(cfg: WandbConfig, overrides: dict[str, Any] | None) -> WandbConfig:
    """Flags such as {"project": "x"} or {"wandb.enabled": True}; None values are ignored."""
    if not overrides:
        return cfg
    data = cfg.model_dump()
    for key, value in overrides.items():
        if value is None:
            continue
        name = key.removeprefix("wandb.")
        if name not in WandbConfig.model_fields:
            raise ConfigError(f"unknown wandb option {key!r}")
        data[name] = value
    try:
        return WandbConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"invalid wandb.{loc}: {err['msg']}") from None


def make_tracker(config: RunConfig, storage: RunStorage, run_id: int,
                 genome: Genome | None = None,
                 overrides: dict[str, Any] | None = None) -> WandbTracker | None:
    """A tracker when W&B is enabled (config `wandb:` plus flag overrides), else None."""
    cfg = _apply_overrides(config.wandb, overrides)
    mode = cfg.mode or os.environ.get("WANDB_MODE")
    if not cfg.enabled or mode == "disabled":
        return None
    return WandbTracker(cfg, storage, run_id, config, genome)
