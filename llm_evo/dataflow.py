"""The data-flow genome: which layers run, in what order (Sakana's data-flow-space search).

From M source models of L layers each (or the `layers` range of each), the path has
T = repeats x M x L slots: repeat 1 is model 1's layers in order, then model 2's, ..., and
each repeat again. A genotype holds, first, one use gene per slot (the slot's layer runs
when its gene is > 0: Sakana's indicator array, searched as a continuous gene thresholded
at 0), then, with `scale`, one gene per ordered pair of different models (i, j): Sakana's
W matrix, the scale of the hidden state entering a layer of model j from a layer of i.

How the scale is realised in weights, exactly: mergekit's passthrough multiplies the
entering layer's `scale_filter` tensors (by default `input_layernorm.weight`) by the gene.
For a pre-norm decoder layer h + attn(norm(h) * w) this scales the attention branch's
input, s * norm(h) * w; the residual stream h itself passes unscaled (a norm right after
a scale would undo a scale of h). tests/test_dataflow.py checks the merged tensor is
s x the source's and every other tensor the source's, bit for bit.

Every genotype maps to a mergekit `passthrough` config; the embeddings come from the
first slice's model and the final norm and head from the last slice's (mergekit's rule),
so each config starts and ends with a zero-length slice of the model that should give
them: the path's first and last layers' models (`embeddings: path`), or the stated one.
An empty path or one longer than `max_layers` is an InvalidGenotypeError: a failed
candidate, never a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llm_evo.config import GenomeConfig
from llm_evo.errors import InvalidGenotypeError
from llm_evo.genome import Axis, SearchSpace, dump_yaml, model_label
from llm_evo.model_ref import canonical_model_ref

# More slots than this is a configuration mistake (a 70B model's 80 layers x 3 models x
# 3 repeats is 720): the genome would be too long for any strategy to search.
MAX_SLOTS = 1024
USE_GENE = 0.5  # |gene| of a slot in or out of the initial path


@dataclass(frozen=True)
class Slot:
    """One position of the candidate path: layer `layer` of model `model` (an index)."""

    model: int
    layer: int
    repeat: int


@dataclass(frozen=True)
class DataFlowAxis(Axis):
    """A use gene (`param` "use") or a scale gene (`param` "scale", `model` "i->j")."""

    @property
    def label(self) -> str:
        if self.param == "use":
            return f"slot {self.layer_group}: {self.model} layer {self.layers[0]} / use"
        return f"scale {self.model}"


def flow_label(reference: str) -> str:
    """A model's name in paths and plots; a run's best merge (PS -> DFS) is `NAME (best)`,
    whether given as the run's storage folder or its final_model."""
    path = Path(reference)
    run = path.parent if path.name == "final_model" else path
    if (run / "llm_evo.sqlite").is_file():
        return f"{run.name} (best)"
    return model_label(reference)


class DataFlowGenome:
    """Maps data-flow genotypes to mergekit passthrough configs (the `Genome` interface)."""

    is_dataflow = True

    def __init__(self, definition: GenomeConfig, models: list[str], num_layers: int):
        if definition.dataflow is None:
            raise InvalidGenotypeError("not a data-flow genome: genome.dataflow is not set")
        self.definition = definition
        self.flow = flow = definition.dataflow
        self.models = list(models)
        self.base_model = None
        self.num_layers = num_layers
        self.model_labels = [flow_label(m) for m in self.models]
        first, end = flow.layers or (0, num_layers)
        if end > num_layers:
            raise InvalidGenotypeError(
                f"genome.dataflow.layers: [{first}, {end}] is out of range: the models have "
                f"{num_layers} layers (0-{num_layers - 1})")
        self.layer_range = (first, end)
        self.slots = tuple(Slot(m, layer, r) for r in range(flow.repeats)
                           for m in range(len(self.models)) for layer in range(first, end))
        if len(self.slots) > MAX_SLOTS:
            raise InvalidGenotypeError(
                f"genome.dataflow: the path has {len(self.slots)} slots ({flow.repeats} "
                f"repeats x {len(self.models)} models x {end - first} layers), more than the "
                f"limit of {MAX_SLOTS}")
        self.max_layers = flow.max_layers or 2 * num_layers
        self.pairs = [(i, j) for i in range(len(self.models)) for j in range(len(self.models))
                      if i != j] if flow.scale else []
        # genome.models' entry the config validated, resolved like every model
        self.embeddings = (None if flow.embeddings == "path" else self.models[
            definition.models.index(canonical_model_ref(flow.embeddings))])
        self.space = self._build_space()

    # ---- the box -------------------------------------------------------------------------
    def _build_space(self) -> SearchSpace:
        axes: list[Axis] = []
        for t, slot in enumerate(self.slots):
            axes.append(DataFlowAxis(len(axes), t, (slot.layer, slot.layer + 1),
                                     self.model_labels[slot.model], None, "use", -1.0, 1.0))
        low, high = self.flow.scale_range
        for i, j in self.pairs:
            axes.append(DataFlowAxis(len(axes), len(self.slots), (0, 0),
                                     f"{self.model_labels[i]}->{self.model_labels[j]}", None,
                                     "scale", low, high))
        start = self.models.index(self.embeddings) if self.embeddings else 0
        initial = self.parent_genotype(start)
        return SearchSpace(tuple(axes), np.array([a.low for a in axes]),
                           np.array([a.high for a in axes]), initial, self.describe_path)

    @property
    def n_genes(self) -> int:
        return len(self.slots) + len(self.pairs)

    def parent_genotype(self, model_index: int) -> np.ndarray:
        """The genotype whose path is model `model_index`'s layers in order (repeat 1), with
        every scale 1 (clipped into scale_range): that model itself, with
        `embeddings: path` and the full layer range."""
        use = [USE_GENE if s.model == model_index and s.repeat == 0 else -USE_GENE
               for s in self.slots]
        low, high = self.flow.scale_range
        return np.array(use + [min(max(1.0, low), high)] * len(self.pairs), dtype=np.float64)

    # ---- genotype -> path -> config --------------------------------------------------------
    def check(self, genotype: Any) -> np.ndarray:
        return self.space.checked(genotype)

    def path(self, genotype: Any) -> list[tuple[Slot, float]]:
        """The layers the genotype runs, in order, each with the scale of its input (1.0
        unless it is entered from another model's layer)."""
        x = self.check(genotype)
        used = [s for s, gene in zip(self.slots, x, strict=False) if gene > 0]
        if not used:
            raise InvalidGenotypeError("the path is empty: no slot's use gene is above 0")
        if len(used) > self.max_layers:
            raise InvalidGenotypeError(
                f"the path runs {len(used)} layers, more than genome.dataflow.max_layers "
                f"{self.max_layers}")
        scales = dict(zip(self.pairs, x[len(self.slots):], strict=True))
        out, previous = [], None
        for slot in used:
            entering = previous is not None and previous.model != slot.model
            out.append((slot, float(scales.get((previous.model, slot.model), 1.0))
                        if entering else 1.0))
            previous = slot
        return out

    def describe_path(self, genotype: Any) -> str:
        """The path in words: `ft_arith 0-7 -> ft_category 2-3 (x0.81)`, runs of consecutive
        layers of one model joined, each model switch with its scale."""
        try:
            path = self.path(genotype)
        except InvalidGenotypeError as exc:
            return f"invalid ({exc})"
        parts = [f"{self.model_labels[m]} {a}" + (f"-{b - 1}" if b - 1 > a else "")
                 + (f" (x{s:.2f})" if s != 1.0 else "")
                 for m, a, b, s in _runs(path, split_scaled=False)]
        return " -> ".join(parts) + f" ({len(path)} layers)"

    def merge_config_dict(self, genotype: Any, dtype: str = "bfloat16") -> dict:
        """The mergekit-yaml mapping: one slice per run of consecutive layers of one model,
        the entering layer of a scaled model switch in a slice of its own."""
        path = self.path(genotype)
        slices = [self._edge(path[0][0].model)]
        # a scaled slice scales every layer in it: it holds its entering layer only
        for model, first, end, scale in _runs(path, split_scaled=True):
            source: dict[str, Any] = {"model": self.models[model], "layer_range": [first, end]}
            if scale != 1.0:
                source["parameters"] = {"scale": [
                    {"filter": self.flow.scale_filter, "value": scale}, {"value": 1.0}]}
            slices.append({"sources": [source]})
        slices.append(self._edge(path[-1][0].model))
        out: dict[str, Any] = {"merge_method": "passthrough", "slices": slices, "dtype": dtype}
        if self.definition.tokenizer_source:
            out["tokenizer_source"] = self.definition.tokenizer_source
        return out

    def _edge(self, model: int) -> dict:
        """A zero-length slice: the model that gives the embeddings (first) or the final
        norm and head (last), and no layer."""
        ref = self.embeddings or self.models[model]
        start = self.layer_range[0]
        return {"sources": [{"model": ref, "layer_range": [start, start]}]}

    def to_merge_config(self, genotype: Any, dtype: str = "bfloat16"):
        from mergekit.config import MergeConfiguration

        return MergeConfiguration.model_validate(self.merge_config_dict(genotype, dtype))

    def to_yaml(self, genotype: Any, dtype: str = "bfloat16") -> str:
        return dump_yaml(self.merge_config_dict(genotype, dtype))


def _runs(path: list[tuple[Slot, float]], split_scaled: bool) -> list[list[Any]]:
    """[model, first, end, scale] per run of consecutive layers of one model in `path`;
    with `split_scaled`, a scaled entering layer is a run of its own."""
    runs: list[list[Any]] = []
    for slot, scale in path:
        last = runs[-1] if runs else None
        if (last and last[0] == slot.model and last[2] == slot.layer
                and (not split_scaled or scale == last[3] == 1.0)):
            last[2] += 1
        else:
            runs.append([slot.model, slot.layer, slot.layer + 1, scale])
    return runs


def describe_dataflow(genome: DataFlowGenome) -> str:
    """`llm-evo validate`'s account of the data-flow axes."""
    g, flow = genome, genome.flow
    first, end = g.layer_range
    lines = [
        "merge_method: passthrough (data-flow genome)",
        "models: " + ", ".join(g.model_labels),
        f"path: {flow.repeats} repeat(s) x {len(g.models)} model(s) x layers {first}-{end - 1}"
        f" = {len(g.slots)} slots; a slot runs when its use gene (in [-1, 1]) is > 0",
        f"max_layers: {g.max_layers} (a longer path is a failed candidate)",
        "embeddings, final norm and head: " + (
            "the path's first and last layers' models" if g.embeddings is None
            else flow_label(g.embeddings)),
    ]
    if g.pairs:
        low, high = flow.scale_range
        lines.append(f"scales: {len(g.pairs)} (one per ordered model pair) in [{low:g}, "
                     f"{high:g}], multiplying `{flow.scale_filter}` of a layer entered from "
                     "another model's")
    else:
        lines.append("scales: off")
    lines.append(f"genes: {len(g.slots)} use + {len(g.pairs)} scale = {g.n_genes}")
    return "\n".join(lines)
