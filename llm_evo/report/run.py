"""One stored run, read from the ledger alone, and its `summary.md`.

Nothing here needs the models, Ray or lm-eval: the genome's axes are rebuilt from the stored
run config, and the layer count is read back from the stored merge configs, so a report can
be made on any machine that has the storage folder (or while the run is still going). The
figures are drawn by `llm_evo.report.plots`; generations are shown 1-based, as `llm-evo run`
prints them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llm_evo.config import RunConfig
from llm_evo.errors import ConfigError, InvalidGenotypeError
from llm_evo.genome import METHOD_PARAMS, Genome
from llm_evo.report.items import agreement_markdown
from llm_evo.report.plots import (
    PLOTS,
    Report,
    gen_label,
    plot_genome,
    plot_kinship,
    plot_scores,
    plot_times,
    plots_markdown,
    report_folder,
)
from llm_evo.storage import CandidateRecord, RunStorage, open_ledger


# ---- reading a run -----------------------------------------------------------------------
@dataclass
class RunView:
    """One stored run, as the report needs it."""

    storage_path: Path
    run_id: int
    info: dict[str, Any]
    config: RunConfig | None
    parents: list[CandidateRecord]
    candidates: list[CandidateRecord]
    events: list[dict[str, Any]]
    genome: Genome | None = None
    notes: list[str] = field(default_factory=list)
    front: list[CandidateRecord] = field(default_factory=list)  # the ledger's Pareto front
    items: dict[tuple[int, int], dict[str, dict[str, list]]] = field(default_factory=dict)

    @property
    def ok(self) -> list[CandidateRecord]:
        return [c for c in self.candidates if c.status == "ok" and c.raw_score is not None]

    @property
    def best(self) -> CandidateRecord | None:
        return max(self.ok, key=lambda c: c.raw_score, default=None)

    @property
    def generations(self) -> list[int]:
        return sorted({c.generation for c in self.candidates})

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]


def _config_json(storage: RunStorage, run_id: int) -> str:
    return storage.run(run_id)["config_json"]


def load_run(storage: RunStorage, run_id: int | None = None) -> RunView:
    """The run `run_id` (default: the latest) with its config and, where possible, genome."""
    runs = {r["id"]: r for r in storage.runs()}
    if not runs:
        raise ConfigError(f"{storage.root}: the ledger holds no runs yet")
    if run_id is None:
        run_id = max(runs)
    if run_id not in runs:
        known = ", ".join(str(i) for i in sorted(runs))
        raise ConfigError(f"{storage.root}: no run {run_id} (runs: {known})")
    view = RunView(
        storage_path=storage.root,
        run_id=run_id,
        info=runs[run_id],
        config=None,
        parents=storage.candidates(run_id, kind="parent"),
        candidates=storage.candidates(run_id, kind="candidate"),
        events=storage.events(run_id),
        front=storage.front(run_id),
        items=storage.items(run_id),
    )
    try:
        view.config = RunConfig.model_validate_json(_config_json(storage, run_id))
    except ValidationError as exc:
        view.notes.append(f"the stored config no longer validates ({exc.error_count()} "
                          "error(s)); tasks and genome axes are unavailable")
        return view
    view.genome = rebuild_genome(view)
    return view


def _layers_from_merge_configs(candidates: list[CandidateRecord]) -> int | None:
    """The model depth: the largest `layer_range` end in any stored merge config."""
    for c in candidates:
        if not c.merge_config:
            continue
        try:
            data = yaml.safe_load(c.merge_config)
        except yaml.YAMLError:
            continue
        ends = [
            int(src["layer_range"][1])
            for sl in (data or {}).get("slices") or []
            for src in sl.get("sources") or []
            if isinstance(src, dict) and src.get("layer_range")
        ]
        if ends:
            return max(ends)
    return None


def rebuild_genome(view: RunView) -> Genome | None:
    """The run's Genome from its stored config, without opening any model file."""
    config = view.config
    if config is None:
        return None
    g = config.genome
    genotype_len = next((len(c.genotype) for c in view.candidates if c.genotype), None)
    if g.dataflow is not None:
        return _rebuild_dataflow(view, genotype_len)
    num_layers = _layers_from_merge_configs(view.candidates)
    if num_layers is None and genotype_len:
        # smooth merges have no slices: count layer groups from the genotype's length instead
        per_group = ((1 if g.merge_method == "slerp" else len(g.models))
                     * (len(g.filters or []) + 1) * len(METHOD_PARAMS[g.merge_method]))
        if genotype_len % per_group == 0:
            groups = genotype_len // per_group
            if g.layer_granularity:
                num_layers = groups * g.layer_granularity
            elif groups == 1:
                num_layers = 1
                view.notes.append("layer count unknown (smooth merge, one layer group)")
    if num_layers is None:
        view.notes.append("no stored merge config or genotype to infer the layer count from")
        return None
    try:
        genome = Genome(g, g.models, g.base_model, num_layers)
    except InvalidGenotypeError as exc:
        view.notes.append(f"could not rebuild the genome: {exc}")
        return None
    if genotype_len is not None and genotype_len != genome.n_genes:
        view.notes.append(f"stored genotypes have {genotype_len} genes, the rebuilt genome "
                          f"{genome.n_genes}; genes are shown unlabelled")
        return None
    return genome


def _rebuild_dataflow(view: RunView, genotype_len: int | None):
    """A data-flow genome: the layer count from the genotype's length (the path has
    repeats x models x layers use genes, then one scale gene per ordered model pair)."""
    from llm_evo.dataflow import DataFlowGenome

    g = view.config.genome
    flow, n_models = g.dataflow, len(g.models)
    pairs = n_models * (n_models - 1) if flow.scale else 0
    if genotype_len is None or (genotype_len - pairs) % (flow.repeats * n_models):
        view.notes.append("no stored genotype to infer the data-flow path's length from")
        return None
    per_model = (genotype_len - pairs) // (flow.repeats * n_models)
    num_layers = flow.layers[1] if flow.layers else per_model
    try:
        return DataFlowGenome(g, g.models, num_layers)
    except InvalidGenotypeError as exc:
        view.notes.append(f"could not rebuild the genome: {exc}")
        return None


# ---- summary.md --------------------------------------------------------------------------
def _fmt_time(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _task_keys(view: RunView) -> list[str]:
    if view.config is not None:
        return [f"{t.name}/{t.metric}" for t in view.config.tasks]
    return sorted({k for c in [*view.ok, *view.parents] for k in (c.results or {})})


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _cells(rec: CandidateRecord, keys: list[str]) -> str:
    """A table row's cells: each task's metric, then the raw score (or the status)."""
    res = rec.results or {}
    vals = [f"{res[k]:.4f}" if isinstance(res.get(k), (int, float)) else "-" for k in keys]
    score = f"{rec.raw_score:.4f}" if rec.raw_score is not None else rec.status
    return " | ".join([*vals, score])


def summary_markdown(view: RunView, plots: dict[str, Path]) -> str:
    """The run at a glance: status, counts, best vs parents, best merge config, plots."""
    info, cfg = view.info, view.config
    best = view.best
    n_failed = sum(c.status == "failed" for c in view.candidates)
    n_screened = sum(c.status == "estimated" for c in view.candidates)
    lines = [f"# llm-evo report: run {view.run_id}", ""]
    rows = [
        ("storage", f"`{view.storage_path}`"),
        ("status", f"**{info['status']}**"),
        ("started", _fmt_time(info.get("created"))),
    ]
    if info.get("finished"):
        rows.append(("finished", f"{_fmt_time(info['finished'])} "
                                 f"({_fmt_duration(info['finished'] - info['created'])})"))
    if cfg is not None:
        done = len(view.generations)
        rows.append(("search", f"{cfg.search.strategy}, population "
                               f"{cfg.search.population_size or 'default'}, "
                               f"{done}/{cfg.search.max_generations} generations recorded, "
                               f"seed {cfg.search.seed}"))
        g = cfg.genome
        merge = f"{g.merge_method} of {', '.join(Path(m).name for m in g.models)}"
        if g.base_model:
            merge += f" (base {Path(g.base_model).name})"
        if view.genome is not None and view.genome.is_dataflow:
            merge += (f"; a path of {len(view.genome.slots)} slots, at most "
                      f"{view.genome.max_layers} layers, {view.genome.n_genes} genes")
        elif view.genome is not None:
            merge += (f"; {view.genome.num_layers} layers in {view.genome.n_groups} group(s), "
                      f"{view.genome.n_genes} genes")
        rows.append(("merge", merge))
        rows.append(("tasks", ", ".join(f"{t.name} ({t.metric} x {t.weight:g})"
                                         for t in cfg.tasks)))
    screened = (f", {n_screened} screened out (anchor items only, score estimated)"
                if n_screened else "")
    rows.append(("evaluations", f"{len(view.candidates)} candidates ({n_failed} failed"
                                f"{screened}), "
                                f"{len(view.parents)} parents"))
    exchanges, fallbacks = view.events_of("llm_exchange"), view.events_of("llm_fallback")
    if exchanges or fallbacks:
        rows.append(("LLM", f"{len(exchanges)} exchange(s), {len(fallbacks)} fallback(s)"))
    lines += ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]

    keys = _task_keys(view)
    lines += ["## Best merge vs parents", ""]
    if best is None:
        lines += ["No candidate finished successfully yet.", ""]
    else:
        header = ["model", *(_md_escape(k) for k in keys), "score"]
        lines += ["| " + " | ".join(header) + " |",
                  "|---|" + "---:|" * (len(keys) + 1)]

        lines.append(f"| **best merge** ({gen_label(best.generation)} #{best.idx}) | "
                     f"{_cells(best, keys)} |")
        for p in view.parents:
            lines.append(f"| parent {_md_escape(p.label or str(p.idx))} | {_cells(p, keys)} |")
        lines.append("")
        ok_parents = [p for p in view.parents if p.status == "ok" and p.raw_score is not None]
        verdict = f"Best score **{best.raw_score:.4f}** ({gen_label(best.generation)}, " \
                  f"candidate {best.idx})"
        if ok_parents:
            top = max(ok_parents, key=lambda p: p.raw_score)
            diff = best.raw_score - top.raw_score
            word = "beats" if diff > 0 else "does not beat"
            verdict += (f" {word} the best parent, {top.label or top.idx} "
                        f"({top.raw_score:.4f}), by {diff:+.4f}")
        lines += [verdict + ".", ""]
        lines += agreement_markdown(best, view.parents, view.items)
        lines += ["## Best merge config", ""]
        if best.merge_config:
            lines += ["```yaml", best.merge_config.rstrip(), "```", ""]
        else:
            lines += ["(not stored)", ""]

    if view.front:
        lines += ["## Pareto front", "",
                  f"{len(view.front)} non-dominated merge(s); one mergekit config each in "
                  f"`{view.storage_path / 'pareto'}`.", "",
                  "| merge | " + " | ".join(_md_escape(k) for k in keys) + " | score |",
                  "|---|" + "---:|" * (len(keys) + 1)]
        for c in view.front:
            lines.append(f"| {gen_label(c.generation)} #{c.idx} | {_cells(c, keys)} |")
        lines.append("")
    lines += plots_markdown(plots, PLOTS)

    failed = [c for c in view.candidates if c.status == "failed"]
    if failed:
        lines += ["## Failures", ""]
        for c in failed[:10]:
            err = " ".join((c.error or "no error recorded").split())
            lines.append(f"- {gen_label(c.generation)} #{c.idx}: {_md_escape(err[:200])}")
        if len(failed) > 10:
            lines.append(f"- ... and {len(failed) - 10} more")
        lines.append("")
    if view.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in view.notes), ""]
    return "\n".join(lines)


# ---- the whole report --------------------------------------------------------------------
def write_report(storage_path: str | Path, run_id: int | None = None,
                 out_dir: str | Path | None = None) -> Report:
    """Write `<name>.png` plots and `summary.md` for a run (default: the latest)."""
    storage = open_ledger(storage_path, RunStorage)
    try:
        view = load_run(storage, run_id)
    finally:
        storage.close()
    out = report_folder(out_dir, view.storage_path)
    plotters = {"scores": plot_scores, "genome": plot_genome, "kinship": plot_kinship,
                "times": plot_times}
    if view.config is not None and view.config.search.objective == "pareto":
        from llm_evo.report.pareto_plot import plot_pareto

        plotters["pareto"] = plot_pareto
    plots = {name: fn(view, out / f"{name}.png") for name, fn in plotters.items()}
    summary = out / "summary.md"
    summary.write_text(summary_markdown(view, plots))
    return Report(view.run_id, out, summary, plots)
