"""`llm-evo kinship A B BASE`: model kinship of two fine-tunes against their base.

Numbers go to stdout (`cs: 0.123456`, one per line, or JSON with --json); warnings about
skipped tensors and NaN values go to stderr.
"""

from __future__ import annotations

import json
import math
from typing import Any

import click

from llm_evo.kinship.metrics import parse_metrics

METRICS_HELP = "Metrics, comma- or space-separated: cs (cosine), pcc (Pearson), ed (Euclidean)."


def format_value(value: float, metric: str = "cs") -> str:
    """Plain number: 6 decimals for cs and pcc, 6 significant digits for ed; NaN as `nan`."""
    if math.isnan(value):
        return "nan"
    return f"{value:.6g}" if metric == "ed" else f"{value:.6f}"


def emit_result(result, as_json: bool) -> None:  # noqa: ANN001 - KinshipResult, imported lazily
    """Print a KinshipResult: numbers (or JSON) on stdout, warnings on stderr."""
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    for name, value in result.metrics.items():
        click.echo(f"{name}: {format_value(value, name)}")


def run_pair(
    model_a: str,
    model_b: str,
    base: str,
    metrics: str,
    *,
    split: bool,
    low_precision: bool,
    abs_cosine: bool,
    device: str,
    workers: int | None,
    as_json: bool,
) -> None:
    """Shared by `llm-evo kinship` and `merge_cal`."""
    from llm_evo.kinship import kinship as compute

    names = parse_metrics(metrics)
    result = compute(
        model_a,
        model_b,
        base,
        names,
        split=split,
        low_precision=low_precision,
        abs_cosine=abs_cosine,
        device=device,
        workers=workers,
    )
    emit_result(result, as_json)


def common_options(func):  # noqa: ANN001, ANN201 - click decorator stack
    """--abs-cosine, --device, --workers and --json, shared by the kinship commands."""
    for option in reversed(
        [
            click.option(
                "--abs-cosine",
                is_flag=True,
                help="Report |cos| as the reference tool does (the sign is dropped).",
            ),
            click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N]."),
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=None,
                help="CPU threads for the pass (default: up to 8, one per core).",
            ),
            click.option("--json", "as_json", is_flag=True, help="Print a JSON result."),
        ]
    ):
        func = option(func)
    return func


@click.command("kinship")
@click.argument("model_a")
@click.argument("model_b")
@click.argument("base")
@click.option("--metrics", "-m", default="cs,pcc,ed", show_default=True, help=METRICS_HELP)
@click.option("--split", is_flag=True, help="Per-tensor metrics averaged by element count.")
@click.option(
    "--low-precision", is_flag=True, help="Round each delta tensor to int8 steps of its absmax."
)
@common_options
def kinship(model_a: str, model_b: str, base: str, **options: Any) -> None:
    """Model kinship of MODEL_A and MODEL_B: similarity of their deltas against BASE.

    Each argument is a checkpoint directory (safetensors, sharded with an index, or .bin) or a
    weights file. The pass streams one tensor at a time.
    """
    run_pair(model_a, model_b, base, **options)
