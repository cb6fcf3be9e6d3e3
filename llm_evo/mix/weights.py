"""Mixing weights: given by hand, or softmax(-loss / T) of each model's loss on examples."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llm_evo.errors import ConfigError
from llm_evo.mix.data import ExampleData, load_examples

SUM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class MixWeights:
    """Weights for `models`, with the losses and temperature they came from (if any)."""

    models: tuple[str, ...]
    weights: tuple[float, ...]
    losses: tuple[float, ...] | None = None
    temperature: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def softmax_weights(losses: Sequence[float], temperature: float) -> tuple[float, ...]:
    """softmax(-loss / T), computed stably: lower loss, higher weight; T -> inf is uniform."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise ConfigError(f"--temperature must be a positive number, got {temperature}")
    logits = [-loss / temperature for loss in losses]
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return tuple(e / total for e in exps)


def parse_weights(text: str | Sequence[float], n_models: int, normalize: bool = True
                  ) -> tuple[float, ...]:
    """`w1,w2,...` as floats: one per model, finite, summing to 1 unless not normalizing."""
    if isinstance(text, str):
        try:
            values = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise ConfigError(f"--weights: {text!r} is not a comma-separated list of "
                              "numbers") from None
    else:
        values = tuple(float(v) for v in text)
    if len(values) != n_models:
        raise ConfigError(f"--weights: {len(values)} weight(s) for {n_models} model(s)")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("--weights: every weight must be a finite number")
    if normalize and abs(sum(values) - 1.0) > SUM_TOLERANCE:
        raise ConfigError(f"--weights: sum to {sum(values):.6g}, not 1 "
                          "(pass --no-normalize to mix them as given)")
    return values


def data_weights(models: Sequence[str], examples: str | Path | ExampleData, *,
                 temperature: float = 5.0, neg_number: int = 1, device: str = "cpu",
                 progress: Callable[[str, float], None] | None = None) -> MixWeights:
    """Each model's loss on the examples, then weights = softmax(-loss / T).

    Models are scored one at a time, so memory holds one model, not all of them.
    """
    data = examples if isinstance(examples, ExampleData) else load_examples(examples)
    softmax_weights([0.0], temperature)  # fail on a bad T before paying for any model
    if neg_number < 0:
        raise ConfigError(f"--neg-number must be at least 0, got {neg_number}")
    from llm_evo.mix.losses import model_loss

    losses = []
    for model in models:
        loss = model_loss(model, data, neg_number=neg_number, device=device)
        if progress is not None:
            progress(model, loss)
        losses.append(loss)
    return MixWeights(tuple(models), softmax_weights(losses, temperature), tuple(losses),
                      temperature)
