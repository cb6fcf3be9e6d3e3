"""The best data-flow path (llm_evo/dataflow.py): which layer of which model runs at each
position, and the scale of each model switch.

One row per source model, one column per position of the path: a coloured cell marks the
model whose layer runs there, labelled with that layer's index; a switch between models
is annotated with its input scale. Read it left to right as the hidden state flows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llm_evo.errors import InvalidGenotypeError
from llm_evo.report.plots import PARENT_COLORS, figure, gen_label, note, save

if TYPE_CHECKING:
    from llm_evo.report.run import RunView


def plot_path(view: RunView, path: Path) -> Path:
    genome, best = view.genome, view.best
    try:
        steps = genome.path(best.genotype)
    except InvalidGenotypeError as exc:  # a stored best always has a valid path; be safe
        fig = figure(6, 3)
        ax = fig.add_subplot()
        ax.set_axis_off()
        note(ax, f"the best genotype has no valid path: {exc}")
        return save(fig, path)
    n, m = len(steps), len(genome.models)
    fig = figure(min(max(6.0, 1.8 + 0.42 * n), 22), 1.6 + 0.55 * m)
    ax = fig.add_subplot()
    for pos, (slot, scale) in enumerate(steps):
        color = PARENT_COLORS[slot.model % len(PARENT_COLORS)]
        ax.add_patch(_cell(pos, slot.model, color))
        ax.text(pos, slot.model, str(slot.layer), ha="center", va="center", fontsize=8,
                color="white")
        if pos and steps[pos - 1][0].model != slot.model:
            ax.plot([pos - 1, pos], [steps[pos - 1][0].model, slot.model], color="0.4", lw=1,
                    zorder=0)
            if scale != 1.0:
                ax.text(pos - 0.5, (steps[pos - 1][0].model + slot.model) / 2,
                        f"x{scale:.2f}", ha="center", va="bottom", fontsize=7, color="0.2")
    ax.set_xlim(-0.7, n - 0.3)
    ax.set_ylim(m - 0.4, -0.6)
    ax.set_yticks(range(m), genome.model_labels, fontsize=9)
    step = max(1, n // 24)
    ax.set_xticks(range(0, n, step))
    ax.set_xlabel("position in the path (input to output); cell: the layer's index in its "
                  "model")
    ax.set_title(f"Best path: run {view.run_id}, {gen_label(best.generation)} #{best.idx}, "
                 f"score {best.raw_score:.4f}, {n} layers", fontsize=11)
    return save(fig, path)


def _cell(x: float, y: float, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x - 0.45, y - 0.4), 0.9, 0.8, color=color)
