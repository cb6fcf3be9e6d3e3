"""One generation of a screened search (`evaluation.screening`, issue #17).

1. Every candidate is scored on the anchor items only, and recorded with status
   `estimated`: its per-task results are the estimator's (llm_evo/screening) and its score
   their weighted sum.
2. The best `promote` share by estimate (an event `screening` records which, before any is
   scored further, so a resumed generation promotes the same ones) is scored on the rest of
   the subset; anchors + rest are its full-subset items, and it is recorded as `ok`, with the
   same score a full evaluation gives. Only `ok` candidates can become `best_config.yaml`.
3. The strategy is told the full score where there is one, the estimate otherwise.

Anchors and estimates come from every model fully scored before this generation (parents and
earlier promoted candidates), so they are the same on a resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from llm_evo.config import RunConfig
from llm_evo.errors import ConfigError
from llm_evo.evaluation.jobs import Job, JobResult
from llm_evo.screening.estimator import Screener, means, promoted
from llm_evo.storage import RunStorage


def screener_for(config: RunConfig, storage: RunStorage, run_id: int,
                 generation: int) -> Screener:
    """Anchors and estimator from every model fully scored before `generation`."""
    cfg = config.evaluation.screening
    keys = {f"{t.name}/{t.metric}" for t in config.tasks}
    items = storage.items(run_id)
    full = [items[(c.generation, c.idx)] for c in storage.candidates(run_id)
            if c.status == "ok" and c.generation < generation
            and (c.generation, c.idx) in items]
    if not full:
        raise ConfigError("evaluation.screening: no fully scored parent has per-item results "
                          "to choose anchors from (did every parent fail?)")
    missing = sorted(keys - set(full[0]))
    if missing:
        raise ConfigError(f"evaluation.screening: task {missing[0]} has no per-item results "
                          "(its metric is not per item, e.g. a corpus-level BLEU); screen "
                          "on acc, acc_norm or exact_match")
    return Screener({k: full[0][k] for k in keys}, full, cfg.anchors, cfg.anchor_method,
                    config.search.seed)


def weighted(config: RunConfig, per_task: dict[str, float]) -> float:
    return sum(t.weight * per_task[f"{t.name}/{t.metric}"] for t in config.tasks)


@dataclass
class ScreenedGeneration:
    """Runs the two passes of one generation on the workers; see the module docstring."""

    config: RunConfig
    storage: RunStorage
    run_id: int
    generation: int
    record: Callable[[JobResult, dict[str, Any] | None], None]
    job_for: Callable[[int], Job]  # the generation's candidate in a slot, as a merge job

    def run(self, workers: Any, jobs: list[Job], on_progress: Callable[[float | None], None]
            ) -> None:
        """`jobs`: the generation's candidates not yet recorded. `record(res, overrides)`
        writes a result with the overrides (status, results, score, items)."""
        screener = screener_for(self.config, self.storage, self.run_id, self.generation)
        promoted_slots = self._promoted()
        if promoted_slots is None:
            anchors = screener.anchor_samples()

            def on_anchor(res: JobResult) -> None:
                self._record_estimate(screener, res)
                on_progress(None)

            workers.run([replace(j, samples=anchors) for j in jobs], on_anchor)
            promoted_slots = self._promote(screener)
        recs = {c.idx: c for c in self.storage.candidates(self.run_id,
                                                          generation=self.generation)}
        items = {i: v for (_, i), v in self.storage.items(
            self.run_id, generation=self.generation).items()}
        rest = screener.rest_samples()
        second = []
        for idx in promoted_slots:
            rec = recs.get(idx)
            if rec is None or rec.status != "estimated":
                continue  # scored fully before an interruption, or failed
            second.append(replace(self.job_for(idx), samples=rest))

        def on_rest(res: JobResult) -> None:
            if res.status != "ok":
                self.record(res, None)
                return
            full = screener.combine(items[res.idx], res.items or {})
            per_task = means(full)
            self.record(res, {"status": "ok", "results": per_task, "items": full,
                              "score": weighted(self.config, per_task)})

        workers.run(second, on_rest)

    def _record_estimate(self, screener: Screener, res: JobResult) -> None:
        if res.status != "ok" or not res.items:
            self.record(res, None)
            return
        per_task = screener.estimate(res.items)
        self.record(res, {"status": "estimated", "results": per_task, "items": res.items,
                          "score": weighted(self.config, per_task)})

    def _promoted(self) -> list[int] | None:
        """The slots this generation promoted before an interruption, if it got that far."""
        for event in reversed(self.storage.events(self.run_id, kind="screening")):
            if event["generation"] == self.generation:
                return list(event["promoted"])
        return None

    def _promote(self, screener: Screener) -> list[int]:
        recs = self.storage.candidates(self.run_id, generation=self.generation)
        size = 1 + max((c.idx for c in recs), default=-1)
        estimates: list[float | None] = [None] * size
        for c in recs:
            if c.status == "estimated":
                estimates[c.idx] = c.score
        share = self.config.evaluation.screening.promote
        slots = promoted(estimates, share)
        self.storage.add_events(self.run_id, [{
            "kind": "screening", "generation": self.generation, "promoted": slots,
            "estimates": estimates, "anchors": screener.anchor_samples(),
            "items_per_candidate": screener.items_per_candidate,
            "method": screener.method}])
        return slots


def run_screened(loop: Any, gen: int, jobs: list[Job], genotypes: list[Any],
                 configs: dict[int, str], values: list[list[Any]], scores: list[Any],
                 objectives: list[Any], workers: Any, progress: Any) -> None:
    """A SearchLoop's screened generation: records each result with the loop's `_store`
    (hooks, ledger, best_config.yaml for full scores only), then fills `scores` (full score or
    estimate) and `objectives` for the strategy from the ledger."""
    from llm_evo.pareto import objective_vector

    def record(res: JobResult, overrides: dict[str, Any] | None) -> None:
        loop._store(res, genotypes[res.idx], configs.get(res.idx),
                    [per_candidate[res.idx] for per_candidate in values], **(overrides or {}))

    def job_for(idx: int) -> Job:
        configs.setdefault(idx, loop.genome.to_yaml(genotypes[idx], loop.merge_dtype))
        return Job(gen, idx, merge_config=loop.genome.merge_config_dict(genotypes[idx],
                                                                        loop.merge_dtype))

    ScreenedGeneration(loop.config, loop.storage, loop.run_id, gen, record, job_for).run(
        workers, jobs, lambda _: progress.update(None, best=loop._best_score()))
    for c in loop.storage.candidates(loop.run_id, generation=gen):
        if c.status in ("ok", "estimated"):
            scores[c.idx] = c.score
            objectives[c.idx] = objective_vector(c.results, loop.objective_keys)
