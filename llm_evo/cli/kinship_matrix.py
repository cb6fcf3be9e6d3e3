"""`llm-evo kinship-matrix M1 M2 ... --base B`: pairwise kinship of N models in one pass.

Each file is read once; every metric comes from the same Gram matrix of deltas. Tables of
numbers go to stdout (or JSON with --json); -o writes CSV or JSON files, --plot a PNG heatmap.
"""

from __future__ import annotations

import json

import click

from llm_evo.cli.kinship import METRICS_HELP, common_options, format_value
from llm_evo.errors import ConfigError
from llm_evo.kinship.metrics import parse_metrics


def _table(labels: list[str], values, metric: str) -> list[str]:  # noqa: ANN001 - numpy array
    width = max(9, *(len(label) for label in labels)) + 2
    lines = ["".ljust(width) + "".join(label.rjust(width) for label in labels)]
    for label, row in zip(labels, values, strict=True):
        cells = "".join(format_value(float(v), metric).rjust(width) for v in row)
        lines.append(label.ljust(width) + cells)
    return lines


@click.command("kinship-matrix")
@click.argument("models", nargs=-1, required=True)
@click.option("--base", "-b", required=True, help="The base model the deltas are taken against.")
@click.option("--metrics", "-m", default="cs,pcc,ed", show_default=True, help=METRICS_HELP)
@click.option("--split", is_flag=True, help="Per-tensor metrics averaged by element count.")
@click.option(
    "--low-precision", is_flag=True, help="Round each delta tensor to int8 steps of its absmax."
)
@click.option("--labels", default=None, help="Comma-separated names for the models.")
@click.option(
    "--output",
    "-o",
    "outputs",
    multiple=True,
    help="Write results to FILE.csv (one row per pair) or FILE.json; repeatable.",
)
@click.option("--plot", default=None, help="Write a labelled heatmap PNG to this path.")
@common_options
def kinship_matrix(
    models: tuple[str, ...],
    base: str,
    metrics: str,
    split: bool,
    low_precision: bool,
    labels: str | None,
    outputs: tuple[str, ...],
    plot: str | None,
    abs_cosine: bool,
    device: str,
    workers: int | None,
    as_json: bool,
) -> None:
    """Kinship of every pair of MODELS against --base, from one read of each checkpoint."""
    from llm_evo.kinship import kinship_matrix as compute

    names = parse_metrics(metrics)
    for out in outputs:
        if not out.lower().endswith((".csv", ".json")):
            raise ConfigError(f"--output {out}: expected a .csv or .json file name")
    if plot is not None and not plot.lower().endswith(".png"):
        raise ConfigError(f"--plot {plot}: expected a .png file name")
    label_list = [s.strip() for s in labels.split(",")] if labels else None
    matrix = compute(
        list(models),
        base,
        labels=label_list,
        low_precision=low_precision,
        device=device,
        workers=workers,
    )
    options = {"split": split, "abs_cosine": abs_cosine}
    for out in outputs:
        if out.lower().endswith(".csv"):
            matrix.write_csv(out, names, **options)
        else:
            matrix.write_json(out, names, **options)
    if plot is not None:
        from llm_evo.kinship.plot import plot_heatmap

        plot_heatmap(matrix, plot, names, **options)
    data = matrix.to_dict(names, **options)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for warning in [*matrix.report.warnings, *data["notes"]]:
        click.echo(f"warning: {warning}", err=True)
    for i, metric in enumerate(names):
        if i:
            click.echo("")
        click.echo(f"{metric}:")
        for line in _table(list(matrix.names), matrix.metric(metric, **options), metric):
            click.echo(line)
