"""Labelled heatmaps of kinship matrices (one panel per metric), written as PNG."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from llm_evo.errors import ConfigError
from llm_evo.kinship.matrix import KinshipMatrix
from llm_evo.kinship.metrics import METRIC_NAMES, parse_metrics

_ANNOTATE_UP_TO = 16  # models; beyond that the numbers would not fit in the cells


def plot_heatmap(
    matrix: KinshipMatrix,
    path: str | os.PathLike[str],
    metrics: Sequence[str] | str = ("cs",),
    *,
    split: bool = False,
    abs_cosine: bool = False,
) -> Path:
    """Write one heatmap per metric side by side; cs and pcc share a fixed [-1, 1] scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = parse_metrics(metrics)
    n = len(matrix.names)
    size = min(max(4.0, 0.6 * n + 2.0), 14.0)
    fig, axes = plt.subplots(1, len(names), figsize=(size * len(names), size), squeeze=False)
    for ax, metric in zip(axes[0], names, strict=True):
        values = matrix.metric(metric, split=split, abs_cosine=abs_cosine)
        if metric == "ed":
            image = ax.imshow(values, cmap="viridis")
        else:
            low = 0.0 if (metric == "cs" and abs_cosine) else -1.0
            image = ax.imshow(values, cmap="RdBu_r", vmin=low, vmax=1.0)
        ax.set_xticks(range(n), labels=matrix.names, rotation=45, ha="right")
        ax.set_yticks(range(n), labels=matrix.names)
        mode = "split" if split else "full"
        label = "|cos|" if metric == "cs" and abs_cosine else METRIC_NAMES[metric]
        ax.set_title(f"{metric}: {label} ({mode})")
        if n <= _ANNOTATE_UP_TO:
            for i in range(n):
                for j in range(n):
                    v = values[i, j]
                    text = "nan" if math.isnan(v) else f"{v:.3g}"
                    r, g, b, _ = image.cmap(image.norm(v)) if not math.isnan(v) else (1, 1, 1, 1)
                    dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                    ax.text(
                        j,
                        i,
                        text,
                        ha="center",
                        va="center",
                        fontsize=9,
                        color="white" if dark else "black",
                    )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"kinship against {Path(matrix.base.rstrip('/')).name}")
    fig.tight_layout()
    out = Path(path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the plot ({exc.strerror or exc})") from exc
    finally:
        plt.close(fig)
    return out
