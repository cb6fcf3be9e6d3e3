"""The search space: labelled axes, value ranges, and genotype <-> mergekit config.

A genotype is a flat float vector laid out like mergekit-evolve's tensor
(layer group, model, filter set, parameter), so a gene's index tells its meaning and
every strategy can treat the space as a box. The genome never imports Ray or lm-eval.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_evo.config import METHODS_NEEDING_BASE, GenomeConfig
from llm_evo.errors import InvalidGenotypeError

METHOD_PARAMS: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "slerp": ("t",),
}

# A normalised merge divides by the weight sum; sums this close to zero blow the weights up
# by more than 1000x (or divide by zero), so such a genotype is an invalid candidate.
NORMALIZE_EPS = 1e-3


@dataclass(frozen=True)
class Axis:
    """One gene: which layers, which source model, which tensors, which merge parameter."""

    index: int
    layer_group: int
    layers: tuple[int, int]
    model: str | None
    filter: str | None
    param: str
    low: float
    high: float

    @property
    def label(self) -> str:
        parts = [f"layers {self.layers[0]}-{self.layers[1] - 1}"]
        if self.model is not None:
            parts.append(self.model)
        parts.append(self.filter or "*")
        parts.append(self.param)
        return " / ".join(parts)


@dataclass(frozen=True)
class SearchSpace:
    """What a strategy needs to know about the genome: a labelled box and a start point."""

    axes: tuple[Axis, ...]
    lower: np.ndarray
    upper: np.ndarray
    initial: np.ndarray

    @property
    def n_genes(self) -> int:
        return len(self.axes)

    def clip(self, genotype: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(genotype, dtype=np.float64), self.lower, self.upper)


def model_label(reference: str) -> str:
    """A short, readable name for a model path or hub id."""
    return os.path.basename(reference.rstrip("/")) or reference


class Genome:
    """Maps genotypes of a `genome:` config to mergekit `MergeConfiguration`s."""

    def __init__(self, definition: GenomeConfig, models: list[str], base_model: str | None,
                 num_layers: int):
        self.definition = definition
        self.models = list(models)
        self.base_model = base_model
        # linear and slerp do not use a base; listing it as an unweighted source would make
        # mergekit refuse the merge, so only methods that need one get it.
        self.uses_base = definition.merge_method in METHODS_NEEDING_BASE and bool(base_model)
        self.num_layers = num_layers
        granularity = definition.layer_granularity or num_layers
        if num_layers % granularity:
            raise InvalidGenotypeError(
                f"genome.layer_granularity {granularity} does not divide {num_layers} layers"
            )
        self.layer_step = granularity
        self.n_groups = num_layers // granularity
        self.params = METHOD_PARAMS[definition.merge_method]
        self.filters: list[str | None] = [*(definition.filters or []), None]
        self.is_slerp = definition.merge_method == "slerp"
        self.model_labels = [model_label(m) for m in self.models]
        self.shape = (
            self.n_groups,
            1 if self.is_slerp else len(self.models),
            len(self.filters),
            len(self.params),
        )
        self.space = self._build_space()

    # ---- the box -------------------------------------------------------------------------
    def _range(self, param: str) -> tuple[float, float]:
        if param == "weight" and self.definition.allow_negative_weights:
            return -1.0, 1.0
        return 0.0, 1.0

    def _initial_value(self, param: str) -> float:
        if param == "weight":
            return 1.0 / len(self.models)
        return 0.5 if param == "t" else 1.0

    def _build_space(self) -> SearchSpace:
        axes = []
        for g in range(self.n_groups):
            layers = (g * self.layer_step, (g + 1) * self.layer_step)
            for m in range(self.shape[1]):
                model = None if self.is_slerp else self.model_labels[m]
                for flt in self.filters:
                    for param in self.params:
                        low, high = self._range(param)
                        axes.append(Axis(len(axes), g, layers, model, flt, param, low, high))
        lower = np.array([a.low for a in axes])
        upper = np.array([a.high for a in axes])
        initial = np.array([self._initial_value(a.param) for a in axes])
        return SearchSpace(tuple(axes), lower, upper, initial)

    @property
    def n_genes(self) -> int:
        return self.space.n_genes

    # ---- genotype -> config ----------------------------------------------------------------
    def check(self, genotype: Any) -> np.ndarray:
        """Return the genotype as a 4-D array, or raise InvalidGenotypeError saying why."""
        x = np.asarray(genotype, dtype=np.float64)
        if x.size != self.n_genes:
            raise InvalidGenotypeError(
                f"genotype has {x.size} genes, the genome has {self.n_genes}"
            )
        x = x.reshape(-1)
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise InvalidGenotypeError(f"gene {self.space.axes[bad[0]].label} is not finite")
        outside = np.flatnonzero((x < self.space.lower - 1e-9) | (x > self.space.upper + 1e-9))
        if outside.size:
            axis = self.space.axes[outside[0]]
            raise InvalidGenotypeError(
                f"gene {axis.label} = {x[outside[0]]:.4g} is outside [{axis.low}, {axis.high}]"
            )
        x4 = x.reshape(self.shape)
        if "weight" in self.params and self.definition.effective_normalize:
            sums = x4[:, :, :, self.params.index("weight")].sum(axis=1)
            near_zero = np.argwhere(np.abs(sums) < NORMALIZE_EPS)
            if near_zero.size:
                g, s = near_zero[0]
                raise InvalidGenotypeError(
                    f"normalised weights of layers {g * self.layer_step}-"
                    f"{(g + 1) * self.layer_step - 1} / {self.filters[s] or '*'} sum to "
                    f"{sums[g, s]:.2e}, about zero: the merge would divide by zero"
                )
        return x4

    def merge_config_dict(self, genotype: Any, dtype: str = "bfloat16") -> dict:
        """The mergekit-yaml mapping for a genotype (plain Python types)."""
        x4 = self.check(genotype)
        out: dict[str, Any] = {"merge_method": self.definition.merge_method}
        if self.is_slerp:
            base = self.base_model if self.base_model in self.models else self.models[0]
            out["base_model"] = base
            out["slices"] = self._slices(x4, slerp=True)
        else:
            if self.uses_base:
                out["base_model"] = self.base_model
            if self.definition.smooth:
                out["models"] = self._smooth_models(x4)
            else:
                out["slices"] = self._slices(x4, slerp=False)
            out["parameters"] = {"normalize": self.definition.effective_normalize}
            if self.definition.merge_method in ("ties", "dare_ties"):
                out["parameters"]["int8_mask"] = True
        out["dtype"] = dtype
        if self.definition.tokenizer_source:
            out["tokenizer_source"] = self.definition.tokenizer_source
        return out

    def to_merge_config(self, genotype: Any, dtype: str = "bfloat16"):
        """A validated `mergekit.config.MergeConfiguration` for a genotype."""
        from mergekit.config import MergeConfiguration

        return MergeConfiguration.model_validate(self.merge_config_dict(genotype, dtype))

    def to_yaml(self, genotype: Any, dtype: str = "bfloat16") -> str:
        return dump_yaml(self.merge_config_dict(genotype, dtype))

    def _param_value(self, values: np.ndarray) -> Any:
        """One value per filter set -> mergekit's scalar or [{filter, value}, ...] form."""
        if len(self.filters) == 1:
            return float(values[0])
        return [
            {"filter": f, "value": float(v)} if f else {"value": float(v)}
            for f, v in zip(self.filters, values, strict=True)
        ]

    def _slices(self, x4: np.ndarray, slerp: bool) -> list[dict]:
        slices = []
        for g in range(self.n_groups):
            layer_range = [g * self.layer_step, (g + 1) * self.layer_step]
            if slerp:
                sources = [{"model": m, "layer_range": layer_range} for m in self.models]
                t = self._param_value(x4[g, 0, :, 0])
                slices.append({"sources": sources, "parameters": {"t": t}})
                continue
            sources = []
            for m, model in enumerate(self.models):
                params = {p: self._param_value(x4[g, m, :, i]) for i, p in enumerate(self.params)}
                sources.append({"model": model, "layer_range": layer_range, "parameters": params})
            if self.uses_base and self.base_model not in self.models:
                sources.append({"model": self.base_model, "layer_range": layer_range})
            slices.append({"sources": sources})
        return slices

    def _smooth_models(self, x4: np.ndarray) -> list[dict]:
        """Per-group values become a gradient that mergekit interpolates across layers."""
        models = []
        for m, model in enumerate(self.models):
            params: dict[str, Any] = {}
            for i, p in enumerate(self.params):
                per_set = []
                for s in range(len(self.filters)):
                    gradient = [float(v) for v in x4[:, m, s, i]]
                    per_set.append(gradient[0] if len(gradient) == 1 else gradient)
                if len(self.filters) == 1:
                    params[p] = per_set[0]
                else:
                    params[p] = [
                        {"filter": f, "value": v} if f else {"value": v}
                        for f, v in zip(self.filters, per_set, strict=True)
                    ]
            models.append({"model": model, "parameters": params})
        if self.uses_base and self.base_model not in self.models:
            models.append({"model": self.base_model})
        return models

    # ---- genotype <- config (for seeding and reports) --------------------------------------
    def parent_genotype(self, model_index: int) -> np.ndarray | None:
        """The genotype that reproduces one source model, where the method allows one."""
        if self.is_slerp:
            t = 0.0 if model_index == self.models.index(self._slerp_base()) else 1.0
            return np.full(self.n_genes, t)
        x4 = np.zeros(self.shape)
        x4[:, model_index, :, self.params.index("weight")] = 1.0
        if "density" in self.params:
            x4[:, :, :, self.params.index("density")] = 1.0
        return x4.reshape(-1)

    def _slerp_base(self) -> str:
        return self.base_model if self.base_model in self.models else self.models[0]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values in full: mergekit-yaml users read these files."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None)


def describe_axes(genome: Genome) -> str:
    """A human-readable table of the genome's labelled axes."""
    g = genome
    lines = [
        f"merge_method: {g.definition.merge_method}",
        f"layers: {g.num_layers} in {g.n_groups} group(s) of {g.layer_step}",
        "models: " + ", ".join(g.model_labels) + (" (slerp: one t per group)" * g.is_slerp),
        "filters: " + ", ".join(f or "* (everything else)" for f in g.filters),
        "parameters: " + ", ".join(
            f"{p} in [{g._range(p)[0]:g}, {g._range(p)[1]:g}]" for p in g.params
        ),
        f"genes: {g.n_groups} x {g.shape[1]} x {g.shape[2]} x {g.shape[3]} = {g.n_genes}",
    ]
    return "\n".join(lines)


def resolve_path(reference: str, config_dir: Path | None) -> str:
    """A local model path as an absolute path (CWD first, then the config's folder);
    anything else (a hub id) is returned unchanged."""
    for root in (Path.cwd(), config_dir):
        if root is None:
            continue
        candidate = (root / reference).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
    return reference
