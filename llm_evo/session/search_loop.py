"""The generation loop of `llm-evo run`: ask the strategy, evaluate on the workers, record,
tell; the parents' evaluation before it and the final merge after it.

The loop owns the run's ledger and progress output; strategies and the genome stay pure,
and what acts on candidates (kinship, the data-driven start) comes in as hooks
(`session.hooks`). Each finished evaluation is recorded before anything else happens, and
`best_config.yaml` is rewritten the moment the best improves. A checkpoint after `ask`
("asked") and after `tell` ("told") lets a resumed run re-propose the very genotypes whose
evaluations are on record.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from llm_evo.config import RunConfig
from llm_evo.errors import InvalidGenotypeError
from llm_evo.evaluation.jobs import Job, JobResult
from llm_evo.genome import Genome, model_label
from llm_evo.model_ref import parent_job_source
from llm_evo.pareto import objective_keys, objective_vector
from llm_evo.report.progress import ProgressFactory, silent_progress
from llm_evo.session.hooks import search_hooks
from llm_evo.session.options import RunOptions
from llm_evo.session.session import (
    build_worker_spec,
    library_versions,
    no_echo,
    open_or_resume,
    run_policy,
    running_workers,
)
from llm_evo.storage import CandidateRecord, RunStorage
from llm_evo.strategies import Strategy, strategy_from_config

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: int
    best: CandidateRecord | None
    parents: list[CandidateRecord]
    evaluations: int
    failed: int
    elapsed: float
    best_config_path: Path | None
    final_model_path: Path | None
    resumed: bool = False
    status: str = "finished"
    kinship: dict[str, Any] | None = None  # per-candidate kinship cost (KinshipHook.summary)
    pareto: dict[str, Any] | None = None  # the front's size and folder (ParetoHook.summary)
    llm_usage: tuple[int, int] | None = None  # LLM strategy: (proposals used, generations asked)


class SearchLoop:
    """Runs one search: parents first, then the generations the budget allows."""

    def __init__(self, config: RunConfig, genome: Genome, options: RunOptions,
                 echo: Callable[[str], None] = no_echo, progress: ProgressFactory | None = None):
        self.config = config
        self.genome = genome
        self.options = options
        self.echo = echo
        self.progress = progress or silent_progress  # the CLI's bars on stderr, else silent
        self.storage = RunStorage(options.storage_path)
        self.root = Path(options.storage_path)
        self.best: CandidateRecord | None = None
        self.merge_dtype = "float32"
        self.n_generations = config.search.max_generations  # set from the budget by run()
        self.status = "failed"  # how the run ended, once it has
        config_dir = Path(options.config_dir) if options.config_dir else None
        self.hooks = search_hooks(config, genome, self.storage, self.root, config_dir, echo)
        self.objective_keys = objective_keys(config)

    # ---- set-up ----------------------------------------------------------------------------
    def _strategy(self) -> Strategy:
        space = self.genome.space
        for hook in self.hooks:
            space = hook.search_space(space)
        # Only the strategy's own options; secrets (an API key) come from the command line.
        strategy = strategy_from_config(space, self.config, self.options.strategy_kwargs)
        strategy.start()  # e.g. the LLM server's preflight: a bad key stops the run here
        for hook in self.hooks:
            hook.started(strategy)
        return strategy

    def _worker_spec(self):
        ev = self.config.evaluation
        return build_worker_spec(
            self.config, self.options, self.root, self.config.search.seed,
            merge_cuda=self.options.merge_cuda,
            in_memory=ev.in_memory,
            input_cache=ev.input_cache,
            reshard_dir=str((self.root / "input_models").resolve()) if ev.reshard else None,
            input_models=tuple(dict.fromkeys(
                [*self.genome.models, *([self.genome.base_model] if self.genome.base_model
                                        else [])])),
        )

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> RunSummary:
        started = time.perf_counter()
        strategy = self._strategy()  # fails fast (e.g. an LLM preflight) before Ray starts
        run_id, start_gen, resumed = self._open_run(strategy)
        self.run_id = run_id
        tracker = self._tracker()
        with running_workers(self._worker_spec(), self.options, record_status=self._ended,
                             echo=self.echo, describe=self._describe_workers,
                             scheduling=self.options.scheduling,
                             after=lambda how: _guarded(tracker, "finish",
                                                        self._best_config_path(), how)
                             ) as workers:
            tracker = _guarded(tracker, "start")
            if self.config.search.evaluate_parents:
                self._evaluate_parents(workers)
            self.n_generations = generation_count(self.config, strategy.population_size)
            search_started = time.monotonic()
            for gen in range(start_gen, self.n_generations):
                self._generation(gen, strategy, workers)
                tracker = _guarded(tracker, "log_generation", gen)
                timeout = self.options.timeout
                if timeout is not None and time.monotonic() - search_started > timeout:
                    if gen + 1 < self.n_generations:
                        self.echo(f"--timeout {timeout:g}s reached: stopping after "
                                  f"generation {gen + 1}")
                    break
        final_path = self._final_merge() if self.options.save_final_model else None
        cands = self.storage.candidates(run_id, kind="candidate")
        summaries = {h.name: h.summary(cands) for h in self.hooks}
        return RunSummary(
            run_id=run_id,
            best=self.storage.best(run_id),
            parents=self.storage.candidates(run_id, kind="parent"),
            evaluations=len(cands),
            failed=sum(c.status == "failed" for c in cands),
            elapsed=time.perf_counter() - started,
            best_config_path=self._best_config_path(),
            final_model_path=final_path,
            resumed=resumed,
            kinship=summaries.get("kinship"),
            pareto=summaries.get("pareto"),
            status=self.status,
            llm_usage=llm_usage(self.storage, run_id) if strategy.name == "llm" else None,
        )

    # ---- opening or resuming a run ---------------------------------------------------------
    def _open_run(self, strategy: Strategy) -> tuple[int, int, bool]:
        """A new run, or the latest run of the same config continued where it stopped.

        Returns (run id, first generation to run, resumed?). Finished evaluations are
        never repeated: the strategy is restored from its newest checkpoint, and the
        generation loop reuses every recorded slot.
        """
        def create() -> int:
            return self.storage.create_run(self.config.canonical_json(),
                                           self.config.config_hash(), self.config.search.seed,
                                           library_versions())

        run_id, resumed = open_or_resume(self.storage, self.config, run_policy(self.options),
                                         self.root, create)
        if resumed is not None:
            return self._resume(run_id, strategy)
        self.storage.add_events(run_id, strategy.drain_events())
        return run_id, 0, False

    def _resume(self, run_id: int, strategy: Strategy) -> tuple[int, int, bool]:
        start_gen = 0
        checkpoint = self.storage.latest_checkpoint(run_id)
        if checkpoint is not None:
            generation, phase, state = checkpoint
            strategy.load_state_dict(state)
            start_gen = generation + 1 if phase == "told" else generation
        strategy.drain_events()  # a restored strategy's start-up events are already stored
        self.storage.set_status(run_id, "running")
        self.best = self.storage.best(run_id)
        if self.best is not None:
            self._write_best_config(self.best)
        shutil.rmtree(self.root / "merges", ignore_errors=True)  # a killed run's leftovers
        done = len(self.storage.candidates(run_id))
        self.echo(f"resuming run {run_id} at generation {start_gen + 1} "
                  f"({done} evaluations already recorded)")
        return run_id, start_gen, True

    def _tracker(self):
        if not (self.config.wandb.enabled or self.options.wandb_overrides.get("enabled")):
            return None
        from llm_evo.report.tracking import make_tracker

        return make_tracker(self.config, self.storage, self.run_id, self.genome,
                            overrides=self.options.wandb_overrides)

    def _ended(self, status: str) -> None:
        self.status = status
        self.storage.set_status(self.run_id, status)

    def _describe_workers(self, infos: list[dict]) -> str:
        """The workers' dtype is the merges' (the parents are scored through it too)."""
        self.merge_dtype = infos[0]["dtype"] if infos else "float32"
        return f" (dtype {self.merge_dtype}); genes: {self.genome.n_genes}"

    def _evaluate_parents(self, workers) -> None:
        models = list(self.genome.models)
        if self.genome.base_model and self.genome.base_model not in models:
            models.append(self.genome.base_model)
        done = {c.idx for c in self.storage.candidates(self.run_id, generation=-1)}
        labels = [*self.genome.model_labels, model_label(models[-1])]  # the base: last, if any
        jobs = {i: Job(-1, i, **parent_job_source(m, self.merge_dtype), kind="parent",
                       label=labels[i]) for i, m in enumerate(models) if i not in done}
        if not jobs:
            return
        progress = self.progress("parents", len(jobs))

        def on_result(res: JobResult) -> None:
            job = jobs[res.idx]
            self.storage.record(self.run_id, _record(res, job, None, None))
            progress.update(res.score if res.status == "ok" else None)

        workers.run(jobs.values(), on_result)
        progress.close()

    def _generation(self, gen: int, strategy: Strategy, workers) -> None:
        genotypes = [np.asarray(g, dtype=np.float64) for g in strategy.ask()]
        # per hook, one value per candidate (e.g. its kinship) for the hook's on_result
        values = [hook.before_generation(self.run_id, gen, genotypes, strategy)
                  or [None] * len(genotypes) for hook in self.hooks]
        self.storage.add_events(self.run_id, strategy.drain_events())
        self.storage.save_checkpoint(self.run_id, gen, strategy.state_dict(), phase="asked")
        scores: list[float | None] = [None] * len(genotypes)
        objectives: list[list[float] | None] = [None] * len(genotypes)  # pareto only
        progress = self.progress(f"gen {gen + 1}/{self.n_generations}", len(genotypes),
                                 best=self._best_score())
        recorded = {c.idx: c for c in self.storage.candidates(self.run_id, generation=gen)}
        jobs: list[Job] = []
        configs: dict[int, str] = {}
        for idx, genotype in enumerate(genotypes):
            prior = recorded.get(idx)
            # Exact: the "asked" checkpoint restores the very genotypes, bit for bit.
            if prior is not None and prior.genotype == genotype.tolist() \
                    and prior.status != "estimated":
                scores[idx] = prior.score if prior.status == "ok" else None  # penalised
                objectives[idx] = objective_vector(prior.results, self.objective_keys)
                progress.update(scores[idx], best=self._best_score())
                continue  # finished before an interruption: never evaluated twice
            try:
                cfg = self.genome.merge_config_dict(genotype, self.merge_dtype)
            except InvalidGenotypeError as exc:
                rec = CandidateRecord(gen, idx, "candidate", None, genotype.tolist(), None, None,
                                      None, "failed", f"InvalidGenotypeError: {exc}")
                self.storage.record(self.run_id, rec)
                progress.update(None)
                continue
            configs[idx] = self.genome.to_yaml(genotype, self.merge_dtype)
            jobs.append(Job(gen, idx, merge_config=cfg))

        def on_result(res: JobResult) -> None:
            rec = self._store(res, genotypes[res.idx], configs.get(res.idx),
                              [per_candidate[res.idx] for per_candidate in values])
            if res.status == "ok":
                scores[res.idx] = rec.score
                objectives[res.idx] = objective_vector(rec.results, self.objective_keys)
            progress.update(res.score if res.status == "ok" else None, best=self._best_score())

        if self.config.evaluation.screening is None:
            workers.run(jobs, on_result)
        else:
            from llm_evo.session.screening import run_screened

            run_screened(self, gen, jobs, genotypes, configs, values, scores, objectives,
                         workers, progress)
        progress.close()
        if self.config.search.objective == "pareto":
            strategy.tell(genotypes, scores, objectives=objectives)
        else:
            strategy.tell(genotypes, scores)
        for hook in self.hooks:
            hook.after_generation(self.run_id, gen, strategy)
        self.storage.add_events(self.run_id, strategy.drain_events())
        self.storage.save_checkpoint(self.run_id, gen, strategy.state_dict())

    def _store(self, res: JobResult, genotype: np.ndarray, merge_config: str | None,
               hook_values: list[Any], **overrides: Any) -> CandidateRecord:
        """Record one result: `overrides` (screening's status, results, score, items), the
        hooks (e.g. a kinship penalty), the ledger, best_config.yaml if a new best."""
        rec = replace(_record(res, None, genotype, merge_config), **overrides)
        for hook, value in zip(self.hooks, hook_values, strict=True):
            rec = hook.on_result(rec, value)
        self.storage.record(self.run_id, rec)
        if rec.status == "ok":
            self._maybe_new_best(rec)
        return rec

    # ---- best-so-far -----------------------------------------------------------------------
    def _best_score(self) -> float | None:
        return self.best.raw_score if self.best else None

    def _maybe_new_best(self, rec: CandidateRecord) -> None:
        score = rec.raw_score if rec.raw_score is not None else rec.score
        if score is None:
            return
        if self.best is not None:
            # Ties go to the earlier slot, as the ledger's best() decides them: the order in
            # which workers finish must not choose best_config.yaml.
            key = (score, -rec.generation, -rec.idx)
            if key <= (self._best_score(), -self.best.generation, -self.best.idx):
                return
        self.best = CandidateRecord(**{**rec.__dict__, "raw_score": score})
        self._write_best_config(self.best)

    def _write_best_config(self, rec: CandidateRecord) -> None:
        """Atomically, so a reader (or a crash) never sees half a file."""
        target = self.root / "best_config.yaml"
        tmp = target.with_suffix(".yaml.tmp")
        tmp.write_text(rec.merge_config or "")
        os.replace(tmp, target)

    def _best_config_path(self) -> Path | None:
        path = self.root / "best_config.yaml"
        return path if self.best is not None and path.is_file() else None

    def _final_merge(self) -> Path | None:
        if self.best is None or not self.best.merge_config:
            return None
        import yaml
        from mergekit.config import MergeConfiguration
        from mergekit.merge import run_merge
        from mergekit.options import MergeOptions

        out = self.root / "final_model"
        cfg = MergeConfiguration.model_validate(yaml.safe_load(self.best.merge_config))
        run_merge(cfg, out_path=str(out), options=MergeOptions(
            copy_tokenizer=True, trust_remote_code=self.options.trust_remote_code,
            allow_crimes=self.options.allow_crimes, lazy_unpickle=True, quiet=True,
            random_seed=self.config.search.seed,
            lora_merge_cache=str(self.root / "lora_merge_cache")))
        return out


def llm_usage(storage: RunStorage, run_id: int) -> tuple[int, int]:
    """(generations whose mean the LLM proposed, generations that asked it), from the ledger.

    Every generation after the first asks the LLM for a mean and records an `llm_mean` event
    whose source is "llm" when the answer was used, or the fallback ("best"/"initial").
    """
    by_generation = {e["generation"]: e.get("source")  # a re-asked generation: the last wins
                     for e in storage.events(run_id, kind="llm_mean")}
    return sum(s == "llm" for s in by_generation.values()), len(by_generation)


def generation_count(config: RunConfig, population_size: int) -> int:
    """search.max_generations, or fewer when search.max_fevals (mergekit-evolve's
    --max-fevals) runs out first: whole generations, as pycma's `maxfevals` counts."""
    s = config.search
    if s.max_fevals is None:
        return s.max_generations
    return min(s.max_generations, math.ceil(s.max_fevals / population_size))


def _guarded(tracker, method: str, *args):
    """Call a tracker method; a W&B failure is logged and tracking stops, the search goes
    on (the ledger is the record). Returns the tracker, or None once it has failed."""
    if tracker is None:
        return None
    try:
        getattr(tracker, method)(*args)
        return tracker
    except Exception as exc:  # noqa: BLE001 - tracking must never end a run
        log.warning("W&B %s failed, tracking disabled for this run: %s", method, exc)
        return None


def _record(res: JobResult, job: Job | None, genotype: np.ndarray | None,
            merge_config: str | None) -> CandidateRecord:
    return CandidateRecord(
        generation=res.generation,
        idx=res.idx,
        kind=job.kind if job else "candidate",
        label=job.label if job else None,
        genotype=genotype.tolist() if genotype is not None else None,
        merge_config=merge_config,
        results=res.results,
        score=res.score,
        status=res.status,
        error=res.error,
        t_merge=res.t_merge,
        t_eval=res.t_eval,
        t_total=res.t_total,
        worker=res.worker,
        items=res.items,
    )
