"""Which genes set the merge parameters of each tensor, exactly as mergekit 0.1.5 resolves them.

Candidate kinship is computed without merging, so we must know, for every tensor the merge
writes, which layer group's (and which filter set's) genes mergekit uses for it. The rules,
read from `mergekit.plan.MergePlanner` and `mergekit.config.evaluate_setting`:

- Layer tensors of layer l take the parameters of the slice holding l (the genome writes one
  slice per layer group). With `smooth: true` the genome writes one slice over all layers with
  a gradient of one value per group; layer l then reads it at t = l / (L - 1), interpolating
  linearly between the two nearest groups.
- Non-layer tensors: the "pre" weights (embeddings) take the first slice's parameters, the
  "post" weights (final norm, lm_head) the last slice's. Both are planned with t = 0, so with
  `smooth` they take the first group's value.
- Filters are substring matches on the tensor name, tried in the genome's order; the first
  match wins, and the last filter set (None) takes everything else.

The mergekit side (which names are pre, layer or post weights) comes from mergekit's own
architecture tables; the assignment itself is plain code so it can be checked in isolation.
The tests check it against real merged checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llm_evo.errors import ConfigError

if TYPE_CHECKING:
    from llm_evo.genome import Genome


@dataclass(frozen=True)
class TensorSlot:
    """One tensor the merge writes, and the genes that parameterise it."""

    name: str
    aliases: tuple[str, ...]
    position: str  # "pre", "layer" or "post"
    layer: int | None
    groups: tuple[tuple[int, float], ...]  # (layer group, interpolation weight), weights sum to 1
    filter_index: int

    @property
    def param_key(self) -> tuple:
        """Tensors with equal keys get identical parameters from every genotype."""
        return (self.groups, self.filter_index)


def filter_index(filters: Sequence[str | None], tensor_name: str) -> int:
    """mergekit's rule: the first condition whose filter is None, "*" or a substring wins."""
    for i, flt in enumerate(filters):
        if flt is None or flt == "*" or flt in tensor_name:
            return i
    # The genome always ends with the None set, so this only happens for a hand-made list.
    raise ConfigError(f"no filter set of the genome matches tensor {tensor_name}")


def _gradient(t: float, n_groups: int) -> tuple[tuple[int, float], ...]:
    """mergekit's linear interpolation of a list of n values at t in [0, 1]."""
    if n_groups == 1:
        return ((0, 1.0),)
    scaled = t * (n_groups - 1)
    i0 = int(scaled)
    i1 = min(n_groups - 1, i0 + 1)
    frac = scaled - i0
    if i1 == i0 or frac == 0.0:
        return ((i0, 1.0),)
    return ((i0, 1.0 - frac), (i1, frac))


def assign_slots(
    genome: Genome,
    pre: Sequence[tuple[str, tuple[str, ...]]],
    layers: Sequence[Sequence[tuple[str, tuple[str, ...]]]],
    post: Sequence[tuple[str, tuple[str, ...]]],
) -> list[TensorSlot]:
    """TensorSlots for the (name, aliases) of the pre, per-layer and post weights."""
    n_layers = len(layers)
    smooth = bool(genome.definition.smooth) and not genome.is_slerp
    groups = genome.n_groups
    last = groups - 1
    slots: list[TensorSlot] = []

    def add(name: str, aliases: tuple[str, ...], position: str, layer: int | None,
            weights: tuple[tuple[int, float], ...]) -> None:
        slots.append(TensorSlot(name, aliases, position, layer, weights,
                                filter_index(genome.filters, name)))

    for name, aliases in pre:
        add(name, aliases, "pre", None, ((0, 1.0),))
    for layer, weights in enumerate(layers):
        if smooth:
            t = layer / (n_layers - 1) if n_layers > 1 else 1.0
            where = _gradient(t, groups)
        else:
            where = ((layer // genome.layer_step, 1.0),)
        for name, aliases in weights:
            add(name, aliases, "layer", layer, where)
    for name, aliases in post:
        # Planned with the module-level reader at t = 0: a gradient gives its first value.
        add(name, aliases, "post", None, ((0, 1.0),) if smooth else ((last, 1.0),))
    return slots


def tensor_slots(genome: Genome, trust_remote_code: bool = False) -> list[TensorSlot]:
    """Every tensor a merge of this genome writes, from mergekit's architecture tables."""
    from mergekit.architecture import get_architecture_info
    from mergekit.architecture.base import ConfiguredModuleArchitecture
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(
        genome.merge_config_dict(genome.space.initial, "float32"))
    options = MergeOptions(trust_remote_code=trust_remote_code)
    arch = get_architecture_info(config, options)
    if len(arch.modules) != 1:
        raise ConfigError(
            f"kinship: {len(arch.modules)}-module architectures are not supported (mergekit "
            "merges them with modules:, which the genome does not write)")
    module = next(iter(arch.modules.values()))
    donor = config.base_model or config.referenced_models()[0]
    configured = ConfiguredModuleArchitecture(
        info=module.architecture, config=donor.config(trust_remote_code=trust_remote_code),
        weight_prefix=module.weight_prefix)

    def named(weights) -> list[tuple[str, tuple[str, ...]]]:  # noqa: ANN001 - mergekit type
        return [(w.name, tuple(w.aliases or ())) for w in weights]

    layers = [named(configured.layer_weights(index=i)) for i in range(genome.num_layers)]
    return assign_slots(genome, named(configured.pre_weights()), layers,
                        named(configured.post_weights()))


def group_matrix(slots: Sequence[TensorSlot], n_groups: int) -> np.ndarray:
    """(len(slots), n_groups) interpolation weights: a slot's value is row @ group values."""
    out = np.zeros((len(slots), n_groups))
    for i, slot in enumerate(slots):
        for g, w in slot.groups:
            out[i, g] += w
    return out
