"""The `llm-evo` command group.

Subcommands are registered as "module:attribute" strings and imported only when
invoked, so `llm-evo --help` never pays for torch, ray or lm-eval imports.
"""

from __future__ import annotations

import importlib
import sys

import click

from llm_evo import __version__
from llm_evo.errors import LlmEvoError

# name -> ("module:attribute", one-line help). Help lives here so --help stays lazy.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("llm_evo.cli.validate:validate", "Check a config and print the genome's axes."),
    "run": ("llm_evo.cli.run:run", "Run an evolutionary merge search."),
    "kinship": ("llm_evo.cli.kinship:kinship", "Model kinship of two models against a base."),
    "kinship-matrix": (
        "llm_evo.cli.kinship_matrix:kinship_matrix",
        "Pairwise kinship of N models in one streaming pass.",
    ),
    "pool": ("llm_evo.cli.pool:pool", "Top-k greedy merging of a model pool, guided by kinship."),
    "report": ("llm_evo.cli.report:report", "Plots and summary.md of a stored run."),
    "runs": ("llm_evo.cli.runs:runs", "List the runs in a storage folder."),
    "mix": ("llm_evo.cli.mix:mix", "Weighted average of models; weights given or from data."),
}


def _load(target: str) -> click.Command:
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        return _load(SUBCOMMANDS[name][0])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUBCOMMANDS[name][1]) for name in sorted(SUBCOMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class ErrorHandlingGroup(LazyGroup):
    """Turns LlmEvoError into one line on stderr and its exit code (2: bad input)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LlmEvoError as exc:
            fail(str(exc), exc.exit_code)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with `code` (2: bad input)."""
    first = " ".join(str(message).split())
    click.echo(f"error: {first}", err=True)
    sys.exit(code)


@click.group(cls=ErrorHandlingGroup)
@click.version_option(__version__, prog_name="llm-evo")
def main() -> None:
    """Evolutionary merge search for LLMs: mergekit merges, lm-eval scores, Ray workers."""


def run_standalone(command: click.Command, args: list[str] | None = None) -> None:
    """Entry point for console scripts that are a single command (e.g. `merge_cal`)."""
    try:
        command.main(args=args, standalone_mode=False)
    except LlmEvoError as exc:
        fail(str(exc), exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
