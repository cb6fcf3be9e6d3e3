"""The greedy pool loop: merge on disk, score on Ray workers, keep the top-k, record lineage.

Ray and lm-eval start once per run (one `WorkerSet`); each round's new models are merged
and scored by the workers in parallel: a job merges with mergekit into
`STORAGE/pool_models/run<N>/<name>` (kept, written beside and renamed once complete), then
scores it. A merged model that is not in the top-k after its round is deleted at
once (the user's input models are never touched), so the storage path holds at most the
top-k plus one round's merges.

Resume: a run that was killed, interrupted or failed is continued by running the same
deterministic loop again over the ledger. Merges and evaluations already recorded are replayed
from it (nothing finished is merged or scored again), and the loop goes on from the first
step that has no record.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from llm_evo.config import PoolConfig
from llm_evo.errors import ConfigError
from llm_evo.evaluation.jobs import Job, JobResult
from llm_evo.genome import dump_yaml, model_label, resolve_path
from llm_evo.pool import algorithm as algo
from llm_evo.pool.merging import pair_merge_config
from llm_evo.report.progress import ProgressFactory, silent_progress
from llm_evo.session.options import PoolOptions
from llm_evo.session.pool_kinship import KinshipCache
from llm_evo.session.session import (
    build_worker_spec,
    library_versions,
    no_echo,
    open_or_resume,
    pool_policy,
    running_workers,
)
from llm_evo.storage import ModelRecord, PoolLedger, RoundRecord

log = logging.getLogger(__name__)


@dataclass
class PoolSummary:
    run_id: int
    stop_reason: str
    rounds: int
    evaluations: int
    failed: int
    best: ModelRecord | None
    top_k: list[ModelRecord]
    top_k_kinship: float | None
    elapsed: float
    inputs: list[ModelRecord] = field(default_factory=list)


class PoolLoop:
    """Runs one pool search (see `llm_evo.pool.algorithm` for the decisions it makes)."""

    def __init__(self, config: PoolConfig, options: PoolOptions,
                 echo: Callable[[str], None] = no_echo, progress: ProgressFactory | None = None):
        self.config = config
        self.section = config.pool
        self.options = options
        self.echo = echo
        self.progress = progress or silent_progress  # the CLI's bars on stderr, else silent
        self.root = Path(options.storage_path)
        self.config_dir = Path(options.config_dir) if options.config_dir else None
        self.base = resolve_path(self.section.base_model, self.config_dir)
        self.inputs = [resolve_path(m, self.config_dir) for m in self.section.models]
        self.check_models()
        self.records: dict[str, ModelRecord] = {}
        self.members: dict[str, algo.Member] = {}  # scored, status ok
        self.merged: set[tuple[str, str]] = set()
        self.evaluations = 0
        self.failed = 0
        self.top: list[str] = []
        self.created: dict[str, int] = {}  # name -> creation order (inputs, then plan order)
        self.input_names: list[str] = []
        self.saved: dict[str, ModelRecord] = {}  # a resumed run's ledger: replayed, not redone
        self.to_merge: dict[str, dict] = {}  # planned merges: name -> mergekit config

    # ---- set-up ----------------------------------------------------------------------------
    def check_models(self) -> None:
        """Every model is a local folder of one architecture and layer count (fail early)."""
        from llm_evo.resolve import read_model_config

        facts = [read_model_config(self.base, "pool.base_model", self.options.trust_remote_code)]
        for i, m in enumerate(self.inputs):
            if not Path(m).is_dir():
                raise ConfigError(f"pool.models[{i}]: {m} is not a model directory (pool "
                                  "members are merged and measured from local folders)")
            facts.append(read_model_config(m, f"pool.models[{i}]",
                                           self.options.trust_remote_code))
        if not Path(self.base).is_dir():
            raise ConfigError(f"pool.base_model: {self.base} is not a model directory")
        first = facts[0]
        for i, f in enumerate(facts[1:]):
            if (f.architecture, f.num_layers) != (first.architecture, first.num_layers):
                raise ConfigError(
                    f"pool.models[{i}]: {f.architecture} with {f.num_layers} layers, but the "
                    f"base is {first.architecture} with {first.num_layers}")

    def _open_run(self, ledger: PoolLedger) -> int:
        """A new pool run, or the unfinished one of the same config, replayed from its ledger
        (see the module's docstring)."""
        def create() -> int:
            return ledger.create_run(self.config.canonical_json(), self.config.config_hash(),
                                     library_versions())

        run_id, previous = open_or_resume(ledger, self.config, pool_policy(self.options),
                                          self.root, create)
        if previous is None:
            return run_id
        self.saved = {m.name: m for m in ledger.models(run_id)}
        ledger.reopen_run(run_id)
        done = sum(m.eval_order is not None for m in self.saved.values())
        self.echo(f"resuming pool run {run_id} ({previous['status']}): {len(self.saved)} "
                  f"models and {done} evaluations on record are replayed, not redone")
        return run_id

    # ---- the run ---------------------------------------------------------------------------
    def run(self) -> PoolSummary:
        started = time.perf_counter()
        spec = build_worker_spec(self.config, self.options, self.root, self.section.seed)
        self.ledger = ledger = PoolLedger(self.root)
        self.run_id = self._open_run(ledger)
        self.models_dir = (self.root / "pool_models" / f"run{self.run_id}").resolve()
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.kin = KinshipCache(self.base, self.section.kinship_metric, ledger, self.run_id)
        for pair, value in ledger.kinship(self.run_id).items():  # a resumed run's pairs
            self.kin.values[pair] = math.nan if value is None else value
        self.stop_reason, last_round = "error", 0
        with running_workers(spec, self.options, record_status=self._ended, echo=self.echo,
                             describe=self._describe_pool,
                             after=lambda _: shutil.rmtree(self.root / "merges",
                                                           ignore_errors=True)) as workers:
            self.stop_reason, last_round = self._loop(workers)
        top = [self.records[n] for n in self.top]
        return PoolSummary(
            run_id=self.run_id, stop_reason=self.stop_reason, rounds=last_round,
            evaluations=self.evaluations, failed=self.failed,
            best=top[0] if top else None, top_k=top,
            top_k_kinship=self._top_kinship(), elapsed=time.perf_counter() - started,
            inputs=[self.records[n] for n in self.input_names],
        )

    def _ended(self, status: str) -> None:
        """An interrupted run says so (resumable: nothing finished is lost); a failed one
        stops with "error"."""
        if status != "finished":
            self.stop_reason = "interrupted" if status == "interrupted" else "error"
        self.ledger.finish_run(self.run_id, status, self.stop_reason)

    def _describe_pool(self, infos: list[dict]) -> str:
        s = self.section
        return (f"; pool of {len(self.inputs)} input models, top-k {s.top_k}, "
                f"exploration {'on' if s.exploration else 'off'}")

    def _loop(self, workers) -> tuple[str, int]:
        s = self.section
        # Round 0: the inputs themselves, so a merge must beat them to enter the top-k.
        labels = _unique_labels(self.inputs)
        self.input_names = labels
        for name, path in zip(labels, self.inputs, strict=True):
            self.kin.paths[name] = path
            self._add(ModelRecord(name=name, round=0, origin="input", path=path))
        self._evaluate(workers, 0, labels)
        # Generation 1: every pair of the inputs.
        ranked = [m.name for m in algo.rank(self.members[n] for n in labels if n in self.members)]
        self.top = ranked[: s.top_k]
        plan = algo.all_pairs(ranked)
        self._run_round(workers, 1, plan)
        reason = self._stop_now(1)
        if reason is not None:
            return reason, 1
        for rnd in range(2, s.max_rounds + 1):
            if self._budget_left() <= 0:
                return "max_evaluations", rnd - 1
            retained = [n for n in self.input_names if n in self.members and n not in self.top]
            if s.exploration:
                self.kin.ensure([(self.top[0], c)
                                 for c in algo.exploration_candidates(self.top, retained)])
            plan = algo.plan_round(self.top, retained, self.merged, self.kin,
                                   s.kinship_metric, s.exploration)
            if not plan:
                return "no_new_pairs", rnd - 1
            before = list(self.top)
            self._run_round(workers, rnd, plan)
            if set(self.top) == set(before):
                return "converged", rnd
            reason = self._stop_now(rnd)
            if reason is not None:
                return reason, rnd
        return "max_rounds", s.max_rounds

    def _stop_now(self, rnd: int) -> str | None:
        if self._budget_left() <= 0:
            return "max_evaluations"
        if algo.kinship_passed(self._top_kinship(), self.section.kinship_stop,
                               self.section.kinship_metric):
            return "kinship_stop"
        if rnd >= self.section.max_rounds:
            return "max_rounds"
        return None

    def _budget_left(self) -> float:
        cap = self.section.max_evaluations
        return math.inf if cap is None else cap - self.evaluations

    def _top_kinship(self) -> float | None:
        if len(self.top) < 2:
            return None
        value = algo.mean_kinship(self.top, self.kin)
        return None if math.isnan(value) else value

    # ---- one round -------------------------------------------------------------------------
    def _run_round(self, workers, rnd: int, plan: list[algo.PlannedMerge]) -> None:
        """Merge the plan (cut to the budget), score it, update the top-k, delete leavers."""
        left = self._budget_left()
        if left < len(plan):
            plan = plan[: int(left)]
        self.kin.ensure([(p.a, p.b) for p in plan])
        names = []
        for i, p in enumerate(plan):
            name = f"g{rnd}-{i:02d}" + ("x" if p.exploration else "")
            names.append(name)
            self._merge(rnd, name, p)
        self._evaluate(workers, rnd, [n for n in names if self.records[n].status == "pending"])
        before = list(self.top)
        contenders = [self.members[n] for n in dict.fromkeys([*self.top, *names])
                      if n in self.members]
        self.top = algo.select_top_k(contenders, self.section.top_k)
        for name in dict.fromkeys([*before, *names]):
            if name not in self.top:
                self._delete(name, rnd)
        best = self.members[self.top[0]] if self.top else None
        kin = self._top_kinship()
        self.ledger.add_round(self.run_id, RoundRecord(
            round=rnd, top_k=list(self.top), best=best.name if best else None,
            best_score=best.score if best else None, top_k_kinship=kin,
            evaluations=self.evaluations, changed=set(self.top) != set(before)))
        kin_text = f", top-k {self.section.kinship_metric} {kin:.3f}" if kin is not None else ""
        self.echo(f"round {rnd}: {len(names)} merge(s), best {best.name} "
                  f"{best.score:.4f}{kin_text}; top-k {', '.join(self.top)} "
                  f"({self.evaluations} evaluations)" if best else f"round {rnd}: no model")

    def _merge(self, rnd: int, name: str, p: algo.PlannedMerge) -> None:
        """Record a planned merge; `_evaluate` sends it to a worker, which merges and scores."""
        self.merged.add(algo.pair_key(p.a, p.b))
        out = self.models_dir / name
        saved = self.saved.get(name)
        if saved is not None and (saved.status != "pending" or out.is_dir()):
            self._replay_merge(saved)
            return
        self.saved.pop(name, None)  # merged before a crash but gone since: merge it again
        cfg = pair_merge_config(self.section, self.kin.paths[p.a], self.kin.paths[p.b],
                                self.base)
        kin = self.kin(p.a, p.b)
        self.to_merge[name] = cfg
        self._add(ModelRecord(name=name, round=rnd, origin="merge", path=str(out), parent_a=p.a,
                              parent_b=p.b, parent_kinship=None if math.isnan(kin) else kin,
                              exploration=p.exploration, merge_config=dump_yaml(cfg)))

    def _evaluate(self, workers, rnd: int, names: list[str]) -> None:
        scored = sorted((n for n in names if n in self.saved
                         and self.saved[n].eval_order is not None),
                        key=lambda n: self.saved[n].eval_order)
        for name in scored:  # a resumed run: these results are on record already
            s = self.saved[name]
            self._record_result(name, s.status == "ok", s.score, s.results, s.error, s.t_eval,
                                write=False)
        names = [n for n in names if n not in scored]
        if not names:
            return
        jobs = {i: Job(rnd, i, kind="pool", label=n, merge_config=self.to_merge[n],
                       out_path=self.records[n].path) if n in self.to_merge
                else Job(rnd, i, model_path=self.records[n].path, kind="pool", label=n)
                for i, n in enumerate(names)}
        best = max((m.score for m in self.members.values()), default=None)
        progress = self.progress("inputs" if rnd == 0 else f"round {rnd}", len(jobs), best=best)

        def on_result(res: JobResult) -> None:
            name = names[res.idx]
            ok = res.status == "ok" and res.score is not None
            if self.to_merge.pop(name, None) is not None:
                if res.t_merge is None:  # the merge itself failed: not an evaluation
                    self._merge_failed(name, res.error)
                    progress.update(None)
                    return
                self.kin.paths[name] = self.records[name].path
                self.ledger.set_merged(self.run_id, name, res.t_merge)
                self.records[name] = replace(self.records[name], t_merge=res.t_merge)
            self._record_result(name, ok, res.score, res.results, res.error, res.t_eval,
                                write=True)
            progress.update(res.score if ok else None)

        workers.run(list(jobs.values()), on_result)
        progress.close()

    def _record_result(self, name: str, ok: bool, score: float | None, results: dict | None,
                       error: str | None, t_eval: float | None, *, write: bool) -> None:
        self.evaluations += 1
        status = "ok" if ok else "failed"
        if write:
            self.ledger.set_result(self.run_id, name, status=status, score=score,
                                   results=results, error=error, eval_order=self.evaluations,
                                   t_eval=t_eval)
        self.records[name] = replace(self.records[name], status=status, score=score,
                                     results=results, error=error,
                                     eval_order=self.evaluations, t_eval=t_eval)
        if ok:  # ties go to the model created first, never to whichever finished first
            self.members[name] = algo.Member(name, float(score), self.created[name])
        else:
            self.failed += 1

    # ---- bookkeeping -----------------------------------------------------------------------
    def _add(self, rec: ModelRecord) -> None:
        self.created.setdefault(rec.name, len(self.created))
        self.records[rec.name] = rec
        if rec.name not in self.saved:  # a resumed run's records stay as they are
            self.ledger.add_model(self.run_id, rec)

    def _merge_failed(self, name: str, error: str | None) -> None:
        self.failed += 1
        error = f"merge failed: {error}"[:2000]
        self.ledger.set_merge_failed(self.run_id, name, error)
        self.records[name] = replace(self.records[name], status="failed", error=error)

    def _replay_merge(self, saved: ModelRecord) -> None:
        """A merge on record: as it stood before it was scored; its result is replayed by
        `_evaluate` and its deletion by `_delete`, at the same points as in the first run."""
        if saved.status == "failed" and saved.eval_order is None:  # the merge itself failed
            self.failed += 1
            self._add(saved)
            return
        self.kin.paths[saved.name] = saved.path
        self._add(replace(saved, status="pending", score=None, results=None, error=None,
                          eval_order=None, t_eval=None, deleted_round=None))

    def _delete(self, name: str, rnd: int) -> None:
        """Delete a merged model that left (or never entered) the top-k; never an input."""
        rec = self.records[name]
        if rec.origin != "merge" or rec.deleted_round is not None:
            return
        path = Path(rec.path).resolve()
        if path.parent != self.models_dir:  # only ever our own merges
            return
        shutil.rmtree(path, ignore_errors=True)
        self.members.pop(name, None)
        self.records[name] = replace(rec, deleted_round=rnd)
        self.ledger.mark_deleted(self.run_id, name, rnd)


def _unique_labels(paths: list[str]) -> list[str]:
    labels = [model_label(p) for p in paths]
    if len(set(labels)) == len(labels):
        return labels
    return [f"{label}-{i}" for i, label in enumerate(labels)]
