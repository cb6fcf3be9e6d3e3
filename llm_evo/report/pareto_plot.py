"""The Pareto front of a `search.objective: pareto` run, with the parents on it.

Two tasks: a scatter of every candidate, the front joined as a staircase, the parents as
labelled stars. More tasks: parallel coordinates, one line per front member and per
parent (the other candidates would only hide them). The front is the ledger's (`pareto`
table), so the picture is the one `pareto/` holds configs for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llm_evo.pareto import objective_vector
from llm_evo.report.plots import PARENT_COLORS, figure, note, save

if TYPE_CHECKING:
    from llm_evo.report.run import RunView

TITLE = "Pareto front"


def _label(key: str) -> str:
    return key.split("/", 1)[0]


def plot_pareto(view: RunView, path: Path) -> Path:
    import numpy as np

    keys = [(f"{t.name}/{t.metric}", 1.0) for t in view.config.tasks]  # raw metric values
    fig = figure(8, 5.5)
    ax = fig.add_subplot()
    cands = [(c, objective_vector(c.results, keys)) for c in view.ok]
    cands = [(c, v) for c, v in cands if v is not None]
    slots = {(c.generation, c.idx) for c in view.front}
    front = sorted((v for c, v in cands if (c.generation, c.idx) in slots),
                   key=lambda v: v[0])
    parents = [(p, objective_vector(p.results, keys)) for p in view.parents
               if p.status == "ok"]
    parents = [(p, v) for p, v in parents if v is not None]
    if not cands and not parents:
        note(ax, "no finished evaluations recorded yet")
    elif len(keys) == 2:
        others = np.array([v for _, v in cands]) if cands else np.empty((0, 2))
        ax.scatter(others[:, 0], others[:, 1], s=16, alpha=0.35, color="tab:blue",
                   label=f"candidates ({len(cands)})")
        if front:
            f = np.array(front)
            # the staircase of what the front dominates, left to right
            ax.step(f[:, 0], f[:, 1], where="pre", color="black", lw=1.2, alpha=0.7)
            ax.scatter(f[:, 0], f[:, 1], s=48, color="black", zorder=4,
                       label=f"Pareto front ({len(front)})")
        for i, (p, v) in enumerate(parents):
            ax.scatter([v[0]], [v[1]], marker="*", s=220, zorder=5,
                       color=PARENT_COLORS[i % len(PARENT_COLORS)],
                       label=f"parent {p.label or p.idx}")
        if parents:  # above this line, a merge beats every parent's mean over the two tasks
            top = max(sum(v) for _, v in parents)
            lo, hi = min(ax.get_xlim()[0], top - 1.05), max(ax.get_xlim()[1], 1.0)
            ax.autoscale(False)
            ax.plot([lo, hi], [top - lo, top - hi], ":", color="0.4", lw=1,
                    label=f"best parent's mean ({top / 2:.3f})")
        ax.set_xlabel(_label(keys[0][0]))
        ax.set_ylabel(_label(keys[1][0]))
        ax.grid(alpha=0.3)
    else:
        xs = np.arange(len(keys))
        for v in front:
            ax.plot(xs, v, color="black", alpha=0.6, lw=1.2)
        if front:
            ax.plot([], [], color="black", label=f"Pareto front ({len(front)})")
        for i, (p, v) in enumerate(parents):
            ax.plot(xs, v, "--", marker="*", ms=10, lw=2,
                    color=PARENT_COLORS[i % len(PARENT_COLORS)],
                    label=f"parent {p.label or p.idx}")
        ax.set_xticks(xs, [_label(k) for k, _ in keys], rotation=20, ha="right")
        ax.set_ylabel("metric value")
        ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"Pareto front: run {view.run_id}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return save(fig, path)
