"""The figures of a stored run, and what every report's figures share (run and pool alike).

Plots use matplotlib's object API (no pyplot), so no global backend or state is touched, and
matplotlib is imported inside the functions: `llm-evo --help` never pays for it. Generations
are shown 1-based, as `llm-evo run` prints them. The shared part (`figure`, `save`, `note`,
`report_folder`, `plots_markdown`, `Report`) is here once so the run report (`run.py`) and
the pool report (`pool.py`) draw and lay out their files the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llm_evo.errors import ConfigError
from llm_evo.storage import CandidateRecord

if TYPE_CHECKING:
    from llm_evo.report.run import RunView

PLOTS = {
    "scores": "Scores per generation",
    "genome": "Best genome",
    "kinship": "Kinship against score",
    "times": "Time per candidate",
    "pareto": "Pareto front",  # search.objective: pareto only (report/pareto_plot.py)
}
DPI = 110
PARENT_COLORS = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan", "tab:gray")
PER_CANDIDATE_MAX = 150  # beyond this many bars, time is shown per generation instead


# ---- shared by every report ----------------------------------------------------------------
@dataclass(frozen=True)
class Report:
    """What a report wrote: its folder, summary.md and one PNG per plot name."""

    run_id: int
    out_dir: Path
    summary: Path
    plots: dict[str, Path]


def report_folder(out_dir: str | Path | None, storage_path: Path) -> Path:
    """`out_dir`, else STORAGE/report, created; one it cannot create is a ConfigError."""
    out = Path(out_dir) if out_dir is not None else storage_path / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create the report folder ({exc.strerror})") from None
    return out


def plots_markdown(plots: dict[str, Path], titles: dict[str, str]) -> list[str]:
    """summary.md's "Plots" section: one titled image per plot, linked by file name."""
    lines = ["## Plots", ""]
    for name, plot_path in plots.items():
        lines += [f"### {titles[name]}", "", f"![{titles[name]}]({plot_path.name})", ""]
    return lines


def figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def note(ax, text: str) -> None:
    """A grey line of text in the middle of an axes that has nothing to show yet."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=11,
            color="0.35", wrap=True)


# ---- the run's figures ---------------------------------------------------------------------
def gen_label(generation: int) -> str:
    return "parents" if generation < 0 else f"gen {generation + 1}"


def plot_scores(view: RunView, path: Path) -> Path:
    """Each candidate's score, the generation mean, best-so-far, and parents as references."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    fig = figure(9, 5)
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
    failed = [c for c in view.candidates if c.status == "failed"]
    if failed:
        lo, _ = ax.get_ylim() if (ok or parents) else (0.0, 1.0)
        ax.scatter([c.generation + 1 for c in failed], [lo] * len(failed), marker="x",
                   color="tab:red", s=30, label=f"failed ({len(failed)})", zorder=3,
                   clip_on=False)
    if not (ok or parents or failed):
        note(ax, "no finished evaluations recorded yet")
    ax.set_xlabel("generation")
    ax.set_ylabel("score (weighted sum of task metrics)")
    ax.set_title(f"Scores per generation: run {view.run_id}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if gens:
        ax.set_xlim(min(gens) + 0.5, max(gens) + 1.5)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save(fig, path)


def plot_genome(view: RunView, path: Path) -> Path:
    """The best genotype as layer group x model heatmaps, one per (parameter, filter)."""
    import numpy as np

    best, genome = view.best, view.genome
    if best is not None and best.genotype and genome is not None and genome.is_dataflow:
        from llm_evo.report.path_plot import plot_path

        return plot_path(view, path)
    if best is None or not best.genotype:
        fig = figure(6, 3)
        ax = fig.add_subplot()
        ax.set_axis_off()
        note(ax, "no successful candidate yet: no best genome to show")
        return save(fig, path)
    if genome is None:  # unlabelled: one row of genes
        values = np.asarray(best.genotype, dtype=float)[None, :]
        fig = figure(min(2 + 0.5 * values.shape[1], 16), 2.6)
        ax = fig.add_subplot()
        im = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_yticks([])
        ax.set_xlabel("gene index")
        fig.colorbar(im, ax=ax)
        ax.set_title(f"Best genome (unlabelled): run {view.run_id}, "
                     f"{gen_label(best.generation)}, score {best.raw_score:.4f}")
        return save(fig, path)

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
    fig = figure(max(5.5, 1.4 + panel_w * n_filters), max(3.2, 0.8 + panel_h * n_params))
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
    fig.suptitle(f"Best genome: run {view.run_id}, {gen_label(best.generation)} "
                 f"#{best.idx}, score {best.raw_score:.4f} "
                 f"({genome.definition.merge_method})", fontsize=11)
    return save(fig, path)


def plot_kinship(view: RunView, path: Path) -> Path:
    """Kinship to the reference (elite/population) against score, coloured by generation."""
    fig = figure(7.5, 5)
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
        note(ax, "no kinship recorded for this run\n(kinship is scored only when the "
                  "config's kinship: section enables it)")
        return save(fig, path)
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
    return save(fig, path)


def plot_times(view: RunView, path: Path) -> Path:
    """Merge, evaluation and other time of every evaluation, grouped by generation.

    Long runs get one bar per generation (the mean per candidate), since hundreds of
    hairline bars show nothing.
    """
    import numpy as np

    records = [*view.parents, *view.candidates]
    per_candidate = len(records) <= PER_CANDIDATE_MAX
    width = 3 + 0.12 * len(records) if per_candidate else 3 + 0.3 * len(view.generations)
    fig = figure(min(16, max(7, width)), 4.6)
    ax = fig.add_subplot()
    ax.set_ylabel("seconds" if per_candidate else "seconds per candidate (mean)")
    ax.set_title(f"Time per candidate: run {view.run_id}")
    if not records:
        note(ax, "no evaluations recorded yet")
        return save(fig, path)

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
                if r.status == "failed":
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
    ax.set_xticks([c for _, c in shown], [gen_label(g) for g, _ in shown],
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
    return save(fig, path)
