"""Kinship of two models against a base: floats in a dataclass, not formatted strings."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from llm_evo.kinship.engine import StreamReport
from llm_evo.kinship.metrics import METRICS


@dataclass(frozen=True)
class KinshipResult:
    """Requested metrics (NaN where undefined, with `notes` saying why) and what was compared."""

    metrics: dict[str, float]
    split: bool
    low_precision: bool
    abs_cosine: bool
    report: StreamReport
    notes: tuple[str, ...] = ()

    def __getitem__(self, metric: str) -> float:
        return self.metrics[metric]

    @property
    def tensors_compared(self) -> int:
        return self.report.tensors_compared

    @property
    def tensors_skipped(self) -> int:
        return self.report.tensors_skipped

    @property
    def warnings(self) -> tuple[str, ...]:
        """Everything a user should know: skipped tensors, vocab mismatch, NaN explanations."""
        return self.report.warnings + self.notes

    def to_dict(self) -> dict:
        """JSON-ready (NaN becomes null)."""
        return {
            "metrics": {k: None if math.isnan(v) else v for k, v in self.metrics.items()},
            "mode": "split" if self.split else "full",
            "low_precision": self.low_precision,
            "abs_cosine": self.abs_cosine,
            "tensors_compared": self.tensors_compared,
            "tensors_skipped": self.tensors_skipped,
            "elements_compared": self.report.elements_compared,
            "report": self.report.to_dict(),
            "warnings": list(self.warnings),
        }


def kinship(
    model_a: str | os.PathLike[str],
    model_b: str | os.PathLike[str],
    base: str | os.PathLike[str],
    metrics: Sequence[str] | str = METRICS,
    *,
    split: bool = False,
    low_precision: bool = False,
    abs_cosine: bool = False,
    device: str = "cpu",
    workers: int | None = None,
) -> KinshipResult:
    """Model kinship (arXiv 2410.12613) of model_a and model_b, deltas taken against base.

    metrics: any of "cs" (signed cosine; |cos| with abs_cosine), "pcc", "ed", as a sequence or
    a "cs,pcc ed" string. split: per-tensor values averaged by element count. low_precision:
    each delta tensor is rounded to int8 steps of its absmax first. Raises ConfigError for bad
    paths, unreadable files and NaN/inf weights.
    """
    from llm_evo.kinship.matrix import kinship_matrix
    from llm_evo.kinship.metrics import parse_metrics

    names = parse_metrics(metrics)  # fail on a bad metric before reading any weights
    matrix = kinship_matrix(
        [model_a, model_b], base, low_precision=low_precision, device=device, workers=workers
    )
    return matrix.pair(0, 1, names, split=split, abs_cosine=abs_cosine)
