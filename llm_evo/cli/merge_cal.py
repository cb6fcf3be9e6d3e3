"""`merge_cal MODEL-1 MODEL-2 MODEL-BASE METRICS`: drop-in for the reference tool's command.

Same positional order as the reference (arXiv 2410.12613's `merge_cal`); metrics may be given as
`cs,pcc,ed`, as one quoted `"cs pcc ed"`, or as separate words. Output is numbers, and cs is
signed unless --abs-cosine asks for the reference's |cos|.
"""

from __future__ import annotations

from typing import Any

import click

from llm_evo.cli import run_standalone
from llm_evo.cli.kinship import common_options, run_pair


@click.command("merge_cal")
@click.argument("model_1")
@click.argument("model_2")
@click.argument("model_base")
@click.argument("metrics", nargs=-1, required=True)
@click.option(
    "--split-calculation",
    "--split",
    "split",
    is_flag=True,
    help="Per-tensor metrics averaged by element count.",
)
@click.option(
    "--low-precision", is_flag=True, help="Round each delta tensor to int8 steps of its absmax."
)
@common_options
def merge_cal(model_1: str, model_2: str, model_base: str, metrics: tuple[str, ...],
              **options: Any) -> None:
    """Model kinship of MODEL_1 and MODEL_2 against MODEL_BASE (metrics: cs, pcc, ed)."""
    run_pair(model_1, model_2, model_base, " ".join(metrics), **options)


def main() -> None:
    """Console-script entry point: errors become one line on stderr and exit code 2."""
    run_standalone(merge_cal)
