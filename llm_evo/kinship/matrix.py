"""Kinship of N models against one base from a single streaming pass: the Gram matrix of their
deltas, from which every pairwise metric (full or split) follows without reading weights again.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_evo.errors import ConfigError
from llm_evo.kinship.engine import StreamReport, stream_gram
from llm_evo.kinship.metrics import METRICS, metric_matrix, parse_metrics, split_matrix
from llm_evo.kinship.stats import GramStats, group_stats

if TYPE_CHECKING:
    from llm_evo.kinship.pair import KinshipResult


@dataclass(frozen=True)
class KinshipMatrix:
    """Float64 statistics of N deltas d_i = model_i - base, whole-model and per tensor."""

    names: tuple[str, ...]  # labels, one per model
    paths: tuple[str, ...]
    base: str
    tensors: dict[str, GramStats]  # per compared tensor, in storage order
    report: StreamReport
    low_precision: bool = False
    buckets: dict[Hashable, GramStats] = field(default_factory=dict)  # from `key`, if given

    @cached_property
    def total(self) -> GramStats:
        """Statistics of the full delta vectors (all compared tensors as one vector)."""
        return GramStats.total(self.tensors.values(), len(self.names))

    @property
    def gram(self) -> np.ndarray:
        """N x N float64: sum over all compared elements of d_i * d_j."""
        return self.total.gram

    @property
    def sums(self) -> np.ndarray:
        return self.total.sums

    @property
    def count(self) -> int:
        """Elements in each delta vector."""
        return self.total.count

    def metric(self, name: str, *, split: bool = False, abs_cosine: bool = False) -> np.ndarray:
        """N x N matrix of cs, pcc or ed; split=True averages per-tensor values by size."""
        if split:
            return split_matrix(name, self.tensors.values(), len(self.names), abs_cosine)[0]
        return metric_matrix(name, self.total, abs_cosine)

    def cosine(self, *, split: bool = False, abs_cosine: bool = False) -> np.ndarray:
        return self.metric("cs", split=split, abs_cosine=abs_cosine)

    def pearson(self, *, split: bool = False) -> np.ndarray:
        return self.metric("pcc", split=split)

    def euclidean(self, *, split: bool = False) -> np.ndarray:
        return self.metric("ed", split=split)

    def grouped(self, key: Callable[[str], Hashable | None]) -> dict[Hashable, GramStats]:
        """Statistics per block, `key(tensor name)` naming the block (None leaves it out)."""
        return group_stats(self.tensors, key, len(self.names))

    def notes(
        self, metric: str, *, split: bool = False, pairs: Sequence[tuple[int, int]] = ()
    ) -> list[str]:
        """Why values of `metric` are NaN (or averaged over fewer tensors), in plain words."""
        out: list[str] = []
        if not self.tensors:
            return out  # the report already says nothing was compared
        pairs = list(pairs) or [
            (i, j) for i in range(len(self.names)) for j in range(i + 1, len(self.names))
        ]
        if split and metric != "ed":
            left_out = split_matrix(metric, self.tensors.values(), len(self.names))[1]
            for i, j in pairs:
                if left_out[i, j]:
                    out.append(
                        f"split {metric} of {self.names[i]} vs {self.names[j]}: {left_out[i, j]} of"
                        f" {len(self.tensors)} tensor(s) left out of the average (a delta is"
                        f" {'all zero' if metric == 'cs' else 'constant'} there)"
                    )
        involved = sorted({i for p in pairs for i in p})
        if metric in ("cs", "pcc"):
            for i in involved:
                if self.total.gram[i, i] == 0:
                    out.append(
                        f"{self.names[i]}: its delta is all zero (it equals the base), so {metric}"
                        f" is undefined (NaN); ed is still defined"
                    )
                elif metric == "pcc" and math.isnan(metric_matrix("pcc", self.total)[i, i]):
                    out.append(f"{self.names[i]}: its delta is constant, so pcc is undefined (NaN)")
        return out

    def pair(
        self,
        i: int,
        j: int,
        metrics: Sequence[str] | str = METRICS,
        *,
        split: bool = False,
        abs_cosine: bool = False,
    ) -> KinshipResult:
        """The kinship of models i and j as a KinshipResult."""
        from llm_evo.kinship.pair import KinshipResult

        names = parse_metrics(metrics)
        values = {m: float(self.metric(m, split=split, abs_cosine=abs_cosine)[i, j]) for m in names}
        notes = [n for m in names for n in self.notes(m, split=split, pairs=[(i, j)])]
        return KinshipResult(
            metrics=values,
            split=split,
            low_precision=self.low_precision,
            abs_cosine=abs_cosine,
            report=self.report,
            notes=tuple(dict.fromkeys(notes)),
        )

    def to_dict(
        self,
        metrics: Sequence[str] | str = METRICS,
        *,
        split: bool = False,
        abs_cosine: bool = False,
    ) -> dict:
        """JSON-ready: matrices per metric (NaN as null), raw statistics and the report."""
        names = parse_metrics(metrics)
        notes = [n for m in names for n in self.notes(m, split=split)]
        return {
            "base": self.base,
            "models": list(self.paths),
            "labels": list(self.names),
            "mode": "split" if split else "full",
            "low_precision": self.low_precision,
            "abs_cosine": abs_cosine,
            "metrics": {
                m: _nan_to_none(self.metric(m, split=split, abs_cosine=abs_cosine)) for m in names
            },
            "gram": _nan_to_none(self.gram),
            "sums": _nan_to_none(self.sums),
            "count": self.count,
            "report": self.report.to_dict(),
            "notes": list(dict.fromkeys(notes)),
        }

    def write_json(
        self, path: str | os.PathLike[str], metrics: Sequence[str] | str = METRICS, **kw
    ) -> None:
        _write(path, json.dumps(self.to_dict(metrics, **kw), indent=2) + "\n")

    def write_csv(
        self,
        path: str | os.PathLike[str],
        metrics: Sequence[str] | str = METRICS,
        *,
        split: bool = False,
        abs_cosine: bool = False,
    ) -> None:
        """Long format: one row per ordered pair (model_a, model_b) with one column per metric."""
        names = parse_metrics(metrics)
        mats = {m: self.metric(m, split=split, abs_cosine=abs_cosine) for m in names}
        rows = [["model_a", "model_b", *names]]
        for i, a in enumerate(self.names):
            for j, b in enumerate(self.names):
                rows.append([a, b, *(repr(float(mats[m][i, j])) for m in names)])
        _write(path, rows)


def _nan_to_none(a: np.ndarray) -> list:
    return [
        _nan_to_none(x) if isinstance(x, np.ndarray) else (None if math.isnan(x) else float(x))
        for x in a
    ]


def _write(path: str | os.PathLike[str], content: str | list[list[str]]) -> None:
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="") as fh:
            if isinstance(content, str):
                fh.write(content)
            else:
                csv.writer(fh).writerows(content)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write ({exc.strerror or exc})") from exc


def default_labels(paths: Sequence[str]) -> list[str]:
    """Directory (or file) names; the full paths where two names clash."""
    short = [Path(str(p).rstrip("/")).name or str(p) for p in paths]
    return short if len(set(short)) == len(short) else [str(p) for p in paths]


def kinship_matrix(
    models: Sequence[str | os.PathLike[str]],
    base: str | os.PathLike[str],
    *,
    labels: Sequence[str] | None = None,
    low_precision: bool = False,
    device: str = "cpu",
    workers: int | None = None,
    key: Callable[[str], Hashable | None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> KinshipMatrix:
    """Stream base and N models once and return their delta statistics as a KinshipMatrix."""
    paths = [str(m) for m in models]
    if len(paths) < 2:
        raise ConfigError(f"kinship needs at least two models besides the base, got {len(paths)}")
    names = list(labels) if labels is not None else default_labels(paths)
    if len(names) != len(paths):
        raise ConfigError(f"--labels: {len(names)} label(s) for {len(paths)} model(s)")
    acc, report = stream_gram(
        paths,
        base,
        key=key,
        low_precision=low_precision,
        device=device,
        workers=workers,
        progress=progress,
    )
    return KinshipMatrix(
        names=tuple(names),
        paths=tuple(paths),
        base=str(base),
        tensors=acc.tensors,
        report=report,
        low_precision=low_precision,
        buckets=acc.buckets,
    )
