"""The search space: labelled axes, value ranges, and genotype <-> mergekit config.

A genotype is a flat float vector laid out like mergekit-evolve's tensor
(layer group, model, filter set, parameter), so a gene's index tells its meaning and
every strategy can treat the space as a box. The genome never imports Ray or lm-eval.

Parity with mergekit-evolve (mergekit/evo/genome.py): with `allow_negative_weights` the
weight genes are unbounded there, so here too: [-1, 1] is only where searches start and
sample, CMA-ES may leave it. slerp over more than two models keeps one gene per model and
layer group and slerps the two top-weighted models of each group, t = softmax(top two)[1].
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_evo.config import METHODS_NEEDING_BASE, GenomeConfig
from llm_evo.errors import InvalidGenotypeError
from llm_evo.model_ref import local_path, parse_model_ref, resolve_local

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
    # False: [low, high] is where searches start and sample, but a gene may leave it (as
    # mergekit-evolve's unbounded CMA-ES genes do); True: genes are clipped to it.
    bounded: bool = True

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
    # A data-flow space's genotype -> its path in words (what the LLM strategy is shown)
    describe: Callable[[np.ndarray], str] | None = field(default=None, compare=False)

    @property
    def n_genes(self) -> int:
        return len(self.axes)

    @property
    def bound_lower(self) -> np.ndarray:
        return np.where([a.bounded for a in self.axes], self.lower, -np.inf)

    @property
    def bound_upper(self) -> np.ndarray:
        return np.where([a.bounded for a in self.axes], self.upper, np.inf)

    def clip(self, genotype: np.ndarray) -> np.ndarray:
        """Into the genes' hard bounds (unbounded genes are left as they are)."""
        return np.clip(np.asarray(genotype, dtype=np.float64), self.bound_lower,
                       self.bound_upper)

    def checked(self, genotype: Any) -> np.ndarray:
        """The genotype as a flat float vector, or InvalidGenotypeError saying why not: the
        wrong gene count, a gene not finite, or one outside its hard bounds."""
        x = np.asarray(genotype, dtype=np.float64)
        if x.size != self.n_genes:
            raise InvalidGenotypeError(
                f"genotype has {x.size} genes, the genome has {self.n_genes}"
            )
        x = x.reshape(-1)
        bad = np.flatnonzero(~np.isfinite(x))
        if bad.size:
            raise InvalidGenotypeError(f"gene {self.axes[bad[0]].label} is not finite")
        outside = np.flatnonzero((x < self.bound_lower - 1e-9) | (x > self.bound_upper + 1e-9))
        if outside.size:
            axis = self.axes[outside[0]]
            raise InvalidGenotypeError(
                f"gene {axis.label} = {x[outside[0]]:.4g} is outside [{axis.low}, {axis.high}]"
            )
        return x

    def clip_range(self, genotype: np.ndarray) -> np.ndarray:
        """Into [lower, upper] for every gene, bounded or not (what a strategy that works on
        a fixed scale, like the LLM's 0..100 grid, can express)."""
        return np.clip(np.asarray(genotype, dtype=np.float64), self.lower, self.upper)


def model_label(reference: str) -> str:
    """A short, readable name for a model reference (path, hub id, `@revision`, `+lora`)."""
    try:
        return parse_model_ref(reference).label()
    except ValueError:
        return os.path.basename(reference.rstrip("/")) or reference


class Genome:
    """Maps genotypes of a `genome:` config to mergekit `MergeConfiguration`s."""

    is_dataflow = False  # see llm_evo/dataflow.py for the other kind

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
        slerp = definition.merge_method == "slerp"
        # Two models: one t per layer group (and filter set). More: mergekit-evolve's
        # layout, one gene per model, the two largest of a group are slerped.
        self.is_slerp = slerp and len(self.models) == 2
        self.slerp_top2 = slerp and len(self.models) > 2
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

    def _bounded(self, param: str) -> bool:
        """mergekit-evolve leaves these genes unbounded: signed weights, and slerp's
        per-model selection genes (their top two and softmax make any value valid)."""
        if param == "weight" and self.definition.allow_negative_weights:
            return False
        return not self.slerp_top2

    def _initial_value(self, param: str) -> float:
        if param == "weight" or self.slerp_top2:
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
                        axes.append(Axis(len(axes), g, layers, model, flt, param, low, high,
                                         self._bounded(param)))
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
        x4 = self.space.checked(genotype).reshape(self.shape)
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
        if self.is_slerp or self.slerp_top2:
            out["base_model"] = self._slerp_base()
            out["slices"] = (self._top2_slices(x4) if self.slerp_top2
                             else self._slices(x4, slerp=True))
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
                if self.definition.tokenizer_source and len(self.filters) == 1:
                    # as mergekit-evolve: weights tell a tokenizer merge how to mix
                    base = self.models.index(self._slerp_base())
                    for i, source in enumerate(sources):
                        source["parameters"] = {"weight": t if i != base else 1 - t}
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

    def _top2_slices(self, x4: np.ndarray) -> list[dict]:
        """mergekit-evolve's slerp over N models: in each layer group the two models with
        the largest genes, t = softmax(those two genes)[1], the larger one as the slice's
        base (ties: the earlier model). A base_model outside `models` is not added as a
        third source, which slerp would refuse."""
        slices = []
        for g in range(self.n_groups):
            layer_range = [g * self.layer_step, (g + 1) * self.layer_step]
            genes = x4[g, :, 0, 0]
            first, second = (int(i) for i in np.argsort(-genes, kind="stable")[:2])
            top = genes[[first, second]]
            t = float(np.exp(top[1] - top.max()) / np.exp(top - top.max()).sum())
            sources = [{"model": self.models[i], "layer_range": layer_range}
                       for i in (first, second)]
            if self.definition.tokenizer_source:
                sources[0]["parameters"] = {"weight": 1 - t}
                sources[1]["parameters"] = {"weight": t}
            slices.append({"sources": sources, "parameters": {"t": t},
                           "base_model": self.models[first]})
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
        if self.slerp_top2:
            return None  # t = softmax(top two) never reaches 0
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
    if genome.is_dataflow:
        from llm_evo.dataflow import describe_dataflow

        return describe_dataflow(genome)
    g = genome
    lines = [
        f"merge_method: {g.definition.merge_method}",
        f"layers: {g.num_layers} in {g.n_groups} group(s) of {g.layer_step}",
        "models: " + ", ".join(g.model_labels) + (" (slerp: one t per group)" * g.is_slerp)
        + (" (slerp: per group, the two largest genes' models, t = softmax(top two)[1])"
           * g.slerp_top2),
        "filters: " + ", ".join(f or "* (everything else)" for f in g.filters),
        "parameters: " + ", ".join(
            f"{p} in [{g._range(p)[0]:g}, {g._range(p)[1]:g}]"
            + ("" if g._bounded(p) else " to start, unbounded") for p in g.params
        ),
        f"genes: {g.n_groups} x {g.shape[1]} x {g.shape[2]} x {g.shape[3]} = {g.n_genes}",
    ]
    return "\n".join(lines)


def resolve_path(reference: str, config_dir: Path | None) -> str:
    """A local path as an absolute path (CWD first, then the config's folder); anything
    else (a hub id) unchanged. A model reference (`path@revision+lora`) has its model and
    adapter paths resolved each on its own."""
    roots = [Path.cwd(), config_dir]
    if "@" in reference or "+" in reference:
        try:
            return resolve_local(reference, roots)
        except ValueError:
            pass  # not a model reference: a plain path
    return local_path(reference, roots)

