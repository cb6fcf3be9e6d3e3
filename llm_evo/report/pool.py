"""The report of a pool run, from the lineage ledger alone: family tree, rounds, summary.md.

`llm-evo report STORAGE` comes here when STORAGE holds a pool ledger and no run ledger.
The family tree is drawn with networkx on a matplotlib Figure (no pyplot, no graphviz):
one row per round, each model coloured by its score, an arrow from each parent labelled
with the parents' kinship; exploration merges are dashed, deleted models faded and the
final top-k outlined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from llm_evo.errors import ConfigError
from llm_evo.report.plots import Report, figure, plots_markdown, report_folder, save
from llm_evo.storage import ModelRecord, PoolLedger, RoundRecord, open_ledger

PLOTS = {
    "family_tree": "Family tree (lineage, scores, parent kinship)",
    "rounds": "Best score and top-k kinship per round",
}


@dataclass(frozen=True)
class PoolView:
    run_id: int
    storage_path: Path
    run: dict
    models: list[ModelRecord]
    rounds: list[RoundRecord]

    @property
    def final_top(self) -> list[str]:
        return self.rounds[-1].top_k if self.rounds else []

    @property
    def metric(self) -> str:
        import json

        return json.loads(self.run["config_json"])["pool"]["kinship_metric"]


def load_pool_run(path: str | Path, run_id: int | None = None) -> PoolView:
    ledger = open_ledger(path, PoolLedger)
    path = ledger.root
    try:
        run = ledger.run(run_id)
        if run is None:
            raise ConfigError(f"{path}: no pool run {run_id}" if run_id else
                              f"{path}: the pool ledger holds no run")
        return PoolView(run["id"], path, run, ledger.models(run["id"]), ledger.rounds(run["id"]))
    finally:
        ledger.close()


# ---- plots -------------------------------------------------------------------------------
def tree_positions(models: list[ModelRecord]) -> dict[str, tuple[float, float]]:
    """One row per round (round 0 on top), each row ordered by score, best on the left."""
    rows: dict[int, list[ModelRecord]] = {}
    for m in models:
        rows.setdefault(m.round, []).append(m)
    width = max((len(r) for r in rows.values()), default=1)
    pos = {}
    for rnd, recs in rows.items():
        recs = sorted(recs, key=lambda m: (-(m.score if m.score is not None else -math.inf),
                                           m.name))
        offset = (width - len(recs)) / 2
        for i, m in enumerate(recs):
            pos[m.name] = (offset + i, -float(rnd))
    return pos


def plot_family_tree(view: PoolView, path: Path) -> Path:
    import networkx as nx
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    graph = nx.DiGraph()
    for m in view.models:
        graph.add_node(m.name)
        for parent in (m.parent_a, m.parent_b):
            if parent:
                graph.add_edge(parent, m.name, exploration=m.exploration,
                               kinship=m.parent_kinship)
    pos = tree_positions(view.models)
    n_rounds = max((m.round for m in view.models), default=0) + 1
    width = max((sum(1 for m in view.models if m.round == r) for r in range(n_rounds)),
                default=1)
    fig = figure(max(7.0, 1.4 * width + 2.5), max(4.0, 1.6 * n_rounds + 1.2))
    ax = fig.add_subplot()
    scores = [m.score for m in view.models if m.score is not None]
    norm = Normalize(min(scores, default=0.0), max(scores, default=1.0))
    cmap = colormaps["viridis"]
    top = set(view.final_top)
    best = view.final_top[0] if view.final_top else None

    plain = [(a, b) for a, b, d in graph.edges(data=True) if not d["exploration"]]
    explore = [(a, b) for a, b, d in graph.edges(data=True) if d["exploration"]]
    common = dict(ax=ax, arrows=True, arrowstyle="-|>", arrowsize=10, node_size=900)
    nx.draw_networkx_edges(graph, pos, edgelist=plain, edge_color="0.55", width=1.0, **common)
    nx.draw_networkx_edges(graph, pos, edgelist=explore, edge_color="tab:red", width=1.6,
                           style="dashed", **common)
    for m in view.models:
        x, y = pos[m.name]
        failed = m.status != "ok"
        face = "0.85" if failed or m.score is None else cmap(norm(m.score))
        edge = "tab:red" if m.name in top else "0.3"
        ax.scatter([x], [y], s=900 if m.name != best else 1300, c=[face],
                   marker="*" if m.name == best else "o",
                   alpha=0.35 if (m.deleted_round is not None or failed) else 1.0,
                   edgecolors=edge, linewidths=2.5 if m.name in top else 0.8, zorder=3)
        text = [_wrap(m.name), "failed" if failed else f"{m.score:.3f}"]
        if m.parent_kinship is not None:
            text.append(f"{view.metric} {m.parent_kinship:.2f}")
        ax.annotate("\n".join(text), (x, y), xytext=(0, -17), textcoords="offset points",
                    ha="center", va="top", fontsize=6.5, zorder=4,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none",
                          "alpha": 0.75})
    ax.tick_params(left=True, labelleft=True)  # networkx switches tick labels off
    ax.set_yticks([-float(r) for r in range(n_rounds)],
                  ["inputs" if r == 0 else f"round {r}" for r in range(n_rounds)])
    ax.set_xticks([])
    xs = [p[0] for p in pos.values()] or [0.0]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-(n_rounds - 1) - 0.7, 0.5)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="score", shrink=0.6)
    ax.legend(handles=[
        Line2D([], [], color="0.55", label=f"parent -> child (under it: score, "
                                           f"{view.metric} of its parents)"),
        Line2D([], [], color="tab:red", ls="--", label="exploration merge"),
        Line2D([], [], marker="o", ls="", mfc="white", mec="tab:red", mew=2.5,
               label="final top-k"),
        Line2D([], [], marker="o", ls="", mfc="0.7", mec="0.3", alpha=0.35, label="deleted"),
    ], loc="lower left", bbox_to_anchor=(0.0, 1.0), ncols=4, fontsize=7, frameon=False)
    fig.suptitle(f"pool run {view.run_id}: family tree", fontsize=10)
    return save(fig, path)


def plot_rounds(view: PoolView, path: Path) -> Path:
    fig = figure(6.5, 3.6)
    ax = fig.add_subplot()
    rounds = [r.round for r in view.rounds]
    ax.plot(rounds, [r.best_score for r in view.rounds], "o-", color="tab:blue",
            label="best score")
    for r in view.rounds:
        ax.annotate(f"{r.evaluations} ev", (r.round, r.best_score), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=7)
    ax.set_xlabel("round")
    ax.set_ylabel("best score", color="tab:blue")
    ax.set_xticks(rounds)
    kin = [(r.round, r.top_k_kinship) for r in view.rounds if r.top_k_kinship is not None]
    if kin:
        ax2 = ax.twinx()
        ax2.plot(*zip(*kin, strict=True), "s--", color="tab:red")
        ax2.set_ylabel(f"top-k mean {view.metric}", color="tab:red")
    fig.suptitle(f"pool run {view.run_id}: stopped ({view.run.get('stop_reason')})",
                 fontsize=10)
    return save(fig, path)


def _wrap(name: str, width: int = 12) -> str:
    """Long model names on two lines, broken at an underscore or dash near the middle."""
    if len(name) <= width:
        return name
    cuts = [i for i, ch in enumerate(name) if ch in "_-"]
    if not cuts:
        return name
    cut = min(cuts, key=lambda i: abs(i - len(name) / 2))
    return f"{name[: cut + 1]}\n{name[cut + 1:]}"


# ---- summary -----------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def pool_summary_markdown(view: PoolView, plots: dict[str, Path]) -> str:
    import json

    cfg = json.loads(view.run["config_json"])["pool"]
    best_round = view.rounds[-1] if view.rounds else None
    by_name = {m.name: m for m in view.models}
    lines = [
        f"# Pool run {view.run_id}", "",
        f"- status: {view.run['status']}, stopped: {view.run.get('stop_reason')}",
        f"- merge: {cfg['merge_method']} (t {cfg['t']}), top-k {cfg['top_k']}, exploration "
        f"{'on' if cfg['exploration'] else 'off'}, kinship {cfg['kinship_metric']}",
        f"- evaluations: {best_round.evaluations if best_round else 0}, rounds: "
        f"{best_round.round if best_round else 0}",
    ]
    if best_round and best_round.best:
        best = by_name[best_round.best]
        lines.append(f"- best: {best.name}, score {_fmt(best.score)} ({best.path})")
    lines += ["", "## Rounds", "", f"| round | evaluations | best | best score | top-k | "
              f"top-k {cfg['kinship_metric']} |", "|---|---|---|---|---|---|"]
    for r in view.rounds:
        lines.append(f"| {r.round} | {r.evaluations} | {r.best} | {_fmt(r.best_score)} | "
                     f"{', '.join(r.top_k)} | {_fmt(r.top_k_kinship)} |")
    lines += ["", "## Lineage", "", f"| model | round | parents | parents' "
              f"{cfg['kinship_metric']} | exploration | score | kept |",
              "|---|---|---|---|---|---|---|"]
    for m in view.models:
        parents = f"{m.parent_a} x {m.parent_b}" if m.parent_a else "(input)"
        kept = "deleted" if m.deleted_round is not None else (
            "top-k" if m.name in view.final_top else "yes")
        score = _fmt(m.score) if m.status == "ok" else f"failed: {(m.error or '')[:80]}"
        lines.append(f"| {m.name} | {m.round} | {parents} | {_fmt(m.parent_kinship)} | "
                     f"{'yes' if m.exploration else ''} | {score} | {kept} |")
    lines += ["", *plots_markdown(plots, PLOTS)]
    return "\n".join(lines)


def write_pool_report(storage_path: str | Path, run_id: int | None = None,
                      out_dir: str | Path | None = None) -> Report:
    """Write family_tree.png, rounds.png and summary.md for a pool run (default: latest)."""
    view = load_pool_run(storage_path, run_id)
    out = report_folder(out_dir, view.storage_path)
    plots = {"family_tree": plot_family_tree(view, out / "family_tree.png"),
             "rounds": plot_rounds(view, out / "rounds.png")}
    summary = out / "summary.md"
    summary.write_text(pool_summary_markdown(view, plots))
    return Report(view.run_id, out, summary, plots)
