"""Plots and a Markdown summary of one stored run, read from the ledger alone.

Nothing here needs the models, Ray or lm-eval: the genome's axes are rebuilt from the stored
run config, and the layer count is read back from the stored merge configs, so a report can
be made on any machine that has the storage folder (or while the run is still going).
Plots use matplotlib's object API (no pyplot), so no global backend or state is touched.
Generations are shown 1-based, as `llm-evo run` prints them.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llm_evo.config import RunConfig
from llm_evo.errors import ConfigError, InvalidGenotypeError
from llm_evo.genome import METHOD_PARAMS, Genome
from llm_evo.storage import CandidateRecord, RunStorage

PLOTS = {
    "scores": "Scores per generation",
    "genome": "Best genome",
    "kinship": "Kinship against score",
    "times": "Time per candidate",
}
DPI = 110
PARENT_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan", "tab:gray")


# ---- reading a run -----------------------------------------------------------------------
def open_storage(path: str | Path) -> RunStorage:
    """Open an existing ledger; a missing or unreadable one is a ConfigError (never created)."""
    path = Path(path)
    if path.is_file() and path.name == RunStorage.FILENAME:
        path = path.parent
    if not path.exists():
        raise ConfigError(f"{path}: no such storage folder")
    if not path.is_dir():
        raise ConfigError(f"{path}: not a storage folder (give the --storage-path of a run)")
    if not (path / RunStorage.FILENAME).is_file():
        raise ConfigError(f"{path}: no llm-evo run ledger ({RunStorage.FILENAME}) in this folder")
    try:
        storage = RunStorage(path)
        storage.runs()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"{path / RunStorage.FILENAME}: not a readable llm-evo ledger ({exc})"
        ) from None
    return storage


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
    num_layers = _layers_from_merge_configs(view.candidates)
    genotype_len = next((len(c.genotype) for c in view.candidates if c.genotype), None)
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


# ---- plots -------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _gen_label(generation: int) -> str:
    return "parents" if generation < 0 else f"gen {generation + 1}"


def plot_scores(view: RunView, path: Path) -> Path:
    """Each candidate's score, the generation mean, best-so-far, and parents as references."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 5)
    ax = fig.add_subplot()
    gens = view.generations
    ok = view.ok
    rng = np.random.default_rng(0)  # fixed jitter: the same ledger gives the same picture
    if ok:
        spread = 0.12 if len(gens) > 1 else 0.0
        jitter = {(c.generation, c.idx): rng.uniform(-spread, spread) for c in ok}

        def x_of(cands: list[CandidateRecord]) -> list[float]:
            return [c.generation + 1 + jitter[(c.generation, c.idx)] for c in cands]

        ax.scatter(x_of(ok), [c.raw_score for c in ok], s=22, alpha=0.65, color="tab:blue",
                   label="candidate score", zorder=3)
        penalised = [c for c in ok if c.score is not None and abs(c.score - c.raw_score) > 1e-12]
        if penalised:
            ax.scatter(x_of(penalised), [c.score for c in penalised], s=22, facecolors="none",
                       edgecolors="tab:red", alpha=0.7, label="after kinship penalty", zorder=3)
        per_gen = {g: [c.raw_score for c in ok if c.generation == g] for g in gens}
        mean_x = [g + 1 for g in gens if per_gen[g]]
        ax.plot(mean_x, [float(np.mean(per_gen[g])) for g in gens if per_gen[g]], ":",
                color="tab:blue", alpha=0.8, label="generation mean")
        best, best_x, best_y, new_x, new_y = -np.inf, [], [], [], []
        for g in gens:
            if per_gen[g] and max(per_gen[g]) > best:
                best = max(per_gen[g])
                new_x.append(g + 1)
                new_y.append(best)
            if np.isfinite(best):
                best_x.append(g + 1)
                best_y.append(best)
        if best_x:  # carry the final level past the last generation so it reads as a level
            best_x.append(best_x[-1] + 0.45)
            best_y.append(best_y[-1])
        ax.step(best_x, best_y, where="post", color="black", lw=2, label="best so far",
                zorder=4)
        ax.plot(new_x, new_y, "o", color="black", ms=4, zorder=4)  # where it improved
    parents = [p for p in view.parents if p.status == "ok" and p.raw_score is not None]
    for i, p in enumerate(parents):
        ax.axhline(p.raw_score, ls="--", lw=1.2, color=PARENT_COLORS[i % len(PARENT_COLORS)],
                   label=f"parent {p.label or p.idx} ({p.raw_score:.3f})", zorder=2)
    failed = [c for c in view.candidates if c.status != "ok"]
    if failed:
        lo, _ = ax.get_ylim() if (ok or parents) else (0.0, 1.0)
        ax.scatter([c.generation + 1 for c in failed], [lo] * len(failed), marker="x",
                   color="tab:red", s=30, label=f"failed ({len(failed)})", zorder=3,
                   clip_on=False)
    if not (ok or parents or failed):
        _note(ax, "no finished evaluations recorded yet")
    ax.set_xlabel("generation")
    ax.set_ylabel("score (weighted sum of task metrics)")
    ax.set_title(f"Scores per generation: run {view.run_id}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if gens:
        ax.set_xlim(min(gens) + 0.5, max(gens) + 1.5)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def _note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35", wrap=True)


def plot_genome(view: RunView, path: Path) -> Path:
    """The best genotype as layer group x model heatmaps, one per (parameter, filter)."""
    import numpy as np

    best, genome = view.best, view.genome
    if best is None or not best.genotype:
        fig = _figure(6, 3)
        ax = fig.add_subplot()
        ax.set_axis_off()
        _note(ax, "no successful candidate yet: no best genome to show")
        return _save(fig, path)
    if genome is None:  # unlabelled: one row of genes
        values = np.asarray(best.genotype, dtype=float)[None, :]
        fig = _figure(min(2 + 0.5 * values.shape[1], 16), 2.6)
        ax = fig.add_subplot()
        im = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_yticks([])
        ax.set_xlabel("gene index")
        fig.colorbar(im, ax=ax)
        ax.set_title(f"Best genome (unlabelled): run {view.run_id}, "
                     f"{_gen_label(best.generation)}, score {best.raw_score:.4f}")
        return _save(fig, path)

    x4 = np.asarray(best.genotype, dtype=float).reshape(genome.shape)
    n_rows, n_cols = genome.shape[0], genome.shape[1]
    n_params, n_filters = len(genome.params), len(genome.filters)
    slerp_axis = None
    if genome.is_slerp:
        base = genome._slerp_base()
        other = next(m for m in genome.models if m != base)
        col_labels = ["t"]
        slerp_axis = f"t = 0: {Path(base).name}, t = 1: {Path(other).name}"
    else:
        col_labels = list(genome.model_labels)
    row_labels = [f"layers {g * genome.layer_step}-{(g + 1) * genome.layer_step - 1}"
                  for g in range(n_rows)]
    if genome.n_groups == 1 and genome.num_layers == 1:
        row_labels = ["all layers"]
    # A grid: one row per merge parameter, one column per filter set.
    panel_w = 2.2 + 1.0 * n_cols
    panel_h = 1.2 + 0.32 * n_rows
    fig = _figure(max(5.5, 1.4 + panel_w * n_filters), max(3.2, 0.8 + panel_h * n_params))
    grid = fig.subplots(n_params, n_filters, squeeze=False)
    annotate = n_rows * n_cols <= 160
    rotate = n_cols > 3 or max(len(c) for c in col_labels) > 14
    for p, param in enumerate(genome.params):
        low, high = genome._range(param)
        cmap = "RdBu_r" if low < 0 else "viridis"
        for f, flt in enumerate(genome.filters):
            ax = grid[p][f]
            data = x4[:, :, f, p]
            im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=low, vmax=high)
            bottom = p == n_params - 1
            ax.set_xticks(range(n_cols), col_labels if bottom else [""] * n_cols,
                          rotation=30 if rotate else 0, ha="right" if rotate else "center",
                          fontsize=9)
            ax.set_yticks(range(n_rows), row_labels if f == 0 else [""] * n_rows,
                          fontsize=8 if n_rows > 12 else 9)
            what = flt or ("all tensors" if n_filters == 1 else "other tensors")
            if slerp_axis and bottom:
                ax.set_xlabel(slerp_axis, fontsize=9)
            ax.set_title(f"{param}: {what}", fontsize=10)
            if annotate:
                for (r, c), v in np.ndenumerate(data):
                    shade = (v - low) / (high - low) if high > low else 0.5
                    dark = shade < 0.55 if cmap == "viridis" else abs(shade - 0.5) > 0.3
                    ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")
            if f == n_filters - 1:
                fig.colorbar(im, ax=grid[p].tolist(), shrink=0.9, pad=0.02, label=param)
    fig.suptitle(f"Best genome: run {view.run_id}, {_gen_label(best.generation)} "
                 f"#{best.idx}, score {best.raw_score:.4f} "
                 f"({genome.definition.merge_method})", fontsize=11)
    return _save(fig, path)


def plot_kinship(view: RunView, path: Path) -> Path:
    """Kinship to the reference (elite/population) against score, coloured by generation."""
    fig = _figure(7.5, 5)
    ax = fig.add_subplot()
    kin = [c for c in view.ok if c.kinship is not None]
    against = view.config.kinship.against if view.config is not None else "reference"
    ax.set_xlabel(f"kinship to the {against} (higher = more alike)")
    ax.set_ylabel("score")
    ax.set_title(f"Kinship against score: run {view.run_id}")
    if not kin:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xticks([])
        ax.set_yticks([])
        _note(ax, "no kinship recorded for this run\n(kinship is scored only when the "
                  "config's kinship: section enables it)")
        return _save(fig, path)
    sc = ax.scatter([c.kinship for c in kin], [c.raw_score for c in kin],
                    c=[c.generation + 1 for c in kin], cmap="viridis", s=28, alpha=0.8)
    cbar = fig.colorbar(sc, ax=ax)
    cbar.set_label("generation")
    k = view.config.kinship if view.config is not None else None
    if k is not None and k.penalty > 0:
        ax.axvline(k.threshold, ls="--", color="tab:red", lw=1,
                   label=f"penalty threshold {k.threshold:g}")
        ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


PER_CANDIDATE_MAX = 150  # beyond this many bars, time is shown per generation instead


def plot_times(view: RunView, path: Path) -> Path:
    """Merge, evaluation and other time of every evaluation, grouped by generation.

    Long runs get one bar per generation (the mean per candidate), since hundreds of
    hairline bars show nothing.
    """
    import numpy as np

    records = [*view.parents, *view.candidates]
    per_candidate = len(records) <= PER_CANDIDATE_MAX
    width = 3 + 0.12 * len(records) if per_candidate else 3 + 0.3 * len(view.generations)
    fig = _figure(min(16, max(7, width)), 4.6)
    ax = fig.add_subplot()
    ax.set_ylabel("seconds" if per_candidate else "seconds per candidate (mean)")
    ax.set_title(f"Time per candidate: run {view.run_id}")
    if not records:
        _note(ax, "no evaluations recorded yet")
        return _save(fig, path)

    def parts(recs: list[CandidateRecord]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        merge = np.array([r.t_merge or 0.0 for r in recs])
        evals = np.array([r.t_eval or 0.0 for r in recs])
        other = np.clip(np.array([r.t_total or 0.0 for r in recs]) - merge - evals, 0, None)
        return merge, evals, other

    merge_all, eval_all, _ = parts(records)
    by_gen: dict[int, list[CandidateRecord]] = {}
    for r in records:
        by_gen.setdefault(r.generation, []).append(r)
    xs: list[float] = []
    centers: list[tuple[int, float]] = []
    failed_x: list[float] = []
    if per_candidate:
        pos = 0.0
        for g, recs in by_gen.items():
            start = pos
            for r in recs:
                xs.append(pos)
                if r.status != "ok":
                    failed_x.append(pos)
                pos += 1.0
            centers.append((g, (start + pos - 1.0) / 2))
            pos += 1.0  # a gap between generations
        merge, evals, other = merge_all, eval_all, parts(records)[2]
    else:
        stacks = [tuple(v.mean() for v in parts(recs)) for recs in by_gen.values()]
        merge, evals, other = (np.array(col) for col in zip(*stacks, strict=True))
        xs = [float(i) for i in range(len(by_gen))]
        centers = list(zip(by_gen, xs, strict=True))
    ax.bar(xs, merge, width=0.85, color="tab:orange", label="merge")
    ax.bar(xs, evals, width=0.85, bottom=merge, color="tab:blue", label="evaluate")
    if other.max(initial=0.0) > 0.01:
        ax.bar(xs, other, width=0.85, bottom=merge + evals, color="0.7", label="other")
    if failed_x:
        ax.scatter(failed_x, [0] * len(failed_x), marker="x", color="tab:red", s=30, zorder=3,
                   clip_on=False, label=f"failed ({len(failed_x)})")
    step = max(1, len(centers) // 15)
    shown = [c for i, c in enumerate(centers) if i % step == 0 or c[0] < 0]
    ax.set_xticks([c for _, c in shown], [_gen_label(g) for g, _ in shown],
                  rotation=30 if len(shown) > 8 else 0, fontsize=9)
    ax.set_xlim(min(xs) - 1, max(xs) + 1)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i].startswith("failed"))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper left",
              bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    what = "Time per candidate" if per_candidate else "Mean time per candidate"
    ax.set_title(f"{what}: run {view.run_id} (merge {merge_all.sum():.0f}s, "
                 f"evaluate {eval_all.sum():.0f}s in all)")
    return _save(fig, path)


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


def summary_markdown(view: RunView, plots: dict[str, Path]) -> str:
    """The run at a glance: status, counts, best vs parents, best merge config, plots."""
    info, cfg = view.info, view.config
    best = view.best
    n_failed = sum(c.status != "ok" for c in view.candidates)
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
        if view.genome is not None:
            merge += (f"; {view.genome.num_layers} layers in {view.genome.n_groups} group(s), "
                      f"{view.genome.n_genes} genes")
        rows.append(("merge", merge))
        rows.append(("tasks", ", ".join(f"{t.name} ({t.metric} x {t.weight:g})"
                                         for t in cfg.tasks)))
    rows.append(("evaluations", f"{len(view.candidates)} candidates ({n_failed} failed), "
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

        def cells(rec: CandidateRecord) -> str:
            res = rec.results or {}
            vals = [f"{res[k]:.4f}" if isinstance(res.get(k), (int, float)) else "-"
                    for k in keys]
            score = f"{rec.raw_score:.4f}" if rec.raw_score is not None else rec.status
            return " | ".join([*vals, score])

        lines.append(f"| **best merge** ({_gen_label(best.generation)} #{best.idx}) | "
                     f"{cells(best)} |")
        for p in view.parents:
            lines.append(f"| parent {_md_escape(p.label or str(p.idx))} | {cells(p)} |")
        lines.append("")
        ok_parents = [p for p in view.parents if p.status == "ok" and p.raw_score is not None]
        verdict = f"Best score **{best.raw_score:.4f}** ({_gen_label(best.generation)}, " \
                  f"candidate {best.idx})"
        if ok_parents:
            top = max(ok_parents, key=lambda p: p.raw_score)
            diff = best.raw_score - top.raw_score
            word = "beats" if diff > 0 else "does not beat"
            verdict += (f" {word} the best parent, {top.label or top.idx} "
                        f"({top.raw_score:.4f}), by {diff:+.4f}")
        lines += [verdict + ".", ""]
        lines += ["## Best merge config", ""]
        if best.merge_config:
            lines += ["```yaml", best.merge_config.rstrip(), "```", ""]
        else:
            lines += ["(not stored)", ""]

    lines += ["## Plots", ""]
    for name, plot_path in plots.items():
        lines += [f"### {PLOTS[name]}", "", f"![{PLOTS[name]}]({plot_path.name})", ""]

    failed = [c for c in view.candidates if c.status != "ok"]
    if failed:
        lines += ["## Failures", ""]
        for c in failed[:10]:
            err = " ".join((c.error or "no error recorded").split())
            lines.append(f"- {_gen_label(c.generation)} #{c.idx}: {_md_escape(err[:200])}")
        if len(failed) > 10:
            lines.append(f"- ... and {len(failed) - 10} more")
        lines.append("")
    if view.notes:
        lines += ["## Notes", "", *(f"- {n}" for n in view.notes), ""]
    return "\n".join(lines)


# ---- the whole report --------------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    run_id: int
    out_dir: Path
    summary: Path
    plots: dict[str, Path]


def write_report(storage_path: str | Path, run_id: int | None = None,
                 out_dir: str | Path | None = None) -> Report:
    """Write `<name>.png` plots and `summary.md` for a run (default: the latest)."""
    storage = open_storage(storage_path)
    try:
        view = load_run(storage, run_id)
    finally:
        storage.close()
    out = Path(out_dir) if out_dir is not None else view.storage_path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    plotters = {"scores": plot_scores, "genome": plot_genome, "kinship": plot_kinship,
                "times": plot_times}
    plots = {name: fn(view, out / f"{name}.png") for name, fn in plotters.items()}
    summary = out / "summary.md"
    summary.write_text(summary_markdown(view, plots))
    return Report(view.run_id, out, summary, plots)
