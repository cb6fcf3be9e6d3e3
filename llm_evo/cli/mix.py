"""`llm-evo mix MODELS... --out DIR`: a weighted average of models (mergekit's linear merge).

Weights come from `--weights w1,w2,...` or from `--example-data FILE`: each model's loss
on the examples, then softmax(-loss / T). The weights table (or JSON with --json) goes to
stdout before the merge starts, so a long merge never hides what is being merged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from llm_evo.errors import ConfigError


def _table(weights) -> str:  # noqa: ANN001 - MixWeights, imported lazily
    names = [os.path.basename(m.rstrip("/")) or m for m in weights.models]
    width = max(12, *(len(n) for n in names))
    has_loss = weights.losses is not None
    lines = [f"{'model':<{width}}  " + ("loss      " if has_loss else "") + "weight"]
    for i, name in enumerate(names):
        loss = f"{weights.losses[i]:<10.4f}" if has_loss else ""
        lines.append(f"{name:<{width}}  {loss}{weights.weights[i]:.4f}")
    if weights.temperature is not None:
        lines.append(f"temperature: {weights.temperature:g}")
    return "\n".join(lines)


@click.command("mix")
@click.argument("models", nargs=-1, required=True)
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder for the mixed model (required unless --dry-run).")
@click.option("--weights", default=None, help="Comma-separated weights, one per model.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Weights must sum to 1 (mergekit divides by the sum); off: use as given.")
@click.option("--example-data", type=click.Path(dir_okay=False), default=None,
              help="JSONL examples; weights = softmax(-loss / T) of each model's loss.")
@click.option("--temperature", type=float, default=5.0, show_default=True,
              help="T in softmax(-loss / T): lower trusts the losses more.")
@click.option("--neg-number", type=click.IntRange(min=0), default=1, show_default=True,
              help="Hard negatives per query for encoder and reranker losses.")
@click.option("--dtype", default=None, help="Output dtype (default: the models' own).")
@click.option("--device", default="cpu", show_default=True,
              help="Device for scoring and merging: cpu or cuda[:N].")
@click.option("--force", is_flag=True, help="Write into a non-empty --out folder.")
@click.option("--dry-run", is_flag=True, help="Print the weights; write no model.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON result.")
def mix(models: tuple[str, ...], out: str | None, weights: str | None, normalize: bool,
        example_data: str | None, temperature: float, neg_number: int, dtype: str | None,
        device: str, force: bool, dry_run: bool, as_json: bool) -> None:
    """Weighted average of MODELS (local model folders, same architecture).

    Give the weights (--weights 0.7,0.3) or let example data pick them (--example-data
    data.jsonl): {"input", "output"} lines for causal LMs, {"query", "pos", "neg"} lines
    for embedding models and rerankers.
    """
    from llm_evo.cli.common import setup_logging
    from llm_evo.mix import MixWeights, check_models, data_weights, mix_models, parse_weights

    setup_logging(verbose=False)
    if (weights is None) == (example_data is None):
        raise ConfigError("mix: give exactly one of --weights or --example-data")
    if out is None and not dry_run:
        raise ConfigError("--out: missing (or pass --dry-run to only print the weights)")
    paths = check_models(models)
    if out is not None and not force:
        target = Path(out)
        if target.exists() and any(target.iterdir()):
            raise ConfigError(f"{out}: output folder exists and is not empty (pass --force)")
    if weights is not None:
        result = MixWeights(paths, parse_weights(weights, len(paths), normalize))
    else:
        _quiet_transformers()
        result = data_weights(paths, example_data, temperature=temperature,
                              neg_number=neg_number, device=device)
    payload = {**result.to_dict(), "normalize": normalize, "out": None, "warnings": []}
    if not as_json:
        click.echo(_table(result))
    if not dry_run:
        merged = mix_models(paths, result.weights, out, normalize=normalize, dtype=dtype,
                            force=force, device=device)
        payload.update(out=str(merged.out.resolve()), warnings=list(merged.warnings))
        if not as_json:
            for warning in merged.warnings:
                click.echo(f"warning: {warning}", err=True)
            click.echo(f"wrote {merged.out}")
    if as_json:
        click.echo(json.dumps(payload, indent=2))


def _quiet_transformers() -> None:
    """No per-model progress bars: the weights table is the output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
