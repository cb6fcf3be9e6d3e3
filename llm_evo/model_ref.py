"""Model references as mergekit writes them: `path`, `path@revision`, `base+lora`, or the
mapping `{model: {path, revision}, lora: ...}`.

Why our own parser: mergekit-evolve configs may name models in any form that
`mergekit.common.ModelReference.model_validate` accepts, but importing mergekit (torch,
peft, transformers) to read a config would make `llm-evo --help` and config validation
slow. This module follows ModelReference's parsing rule for rule and turns every form into
mergekit's own string form (`str(ModelReference)`): `path[@revision][+lora[@revision]]`,
which every merge config, mergekit-yaml and `ModelReference.parse` read back unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """One model reference, split into mergekit's parts."""

    path: str
    revision: str | None = None
    lora: str | None = None
    lora_revision: str | None = None

    @property
    def plain(self) -> bool:
        """A bare path or hub id: lm-eval and transformers can load it as it is."""
        return not self.revision and not self.lora

    def __str__(self) -> str:
        text = _path_str(self.path, self.revision)
        return f"{text}+{_path_str(self.lora, self.lora_revision)}" if self.lora else text

    def label(self) -> str:
        """A short readable name: the folder or repo name, revision and adapter."""
        name = os.path.basename(self.path.rstrip("/")) or self.path
        if self.revision:
            name += f"@{self.revision}"
        if self.lora:
            name += "+" + (os.path.basename(self.lora.rstrip("/")) or self.lora)
        return name

    def with_paths(self, path: str, lora: str | None) -> ModelRef:
        return ModelRef(path, self.revision, lora, self.lora_revision if lora else None)


def _path_str(path: str | None, revision: str | None) -> str:
    return f"{path}@{revision}" if revision else str(path)


def _model_path(value: Any, what: str) -> tuple[str, str | None]:
    """mergekit's ModelPath: "path", "path@revision" or {path, revision}."""
    if isinstance(value, str):
        if value.count("@") > 1:
            raise ValueError(f"{what}: invalid model path, more than one '@': {value}")
        path, _, revision = value.partition("@")
        value = {"path": path, "revision": revision or None}
    if not isinstance(value, dict):
        raise ValueError(f"{what}: expected a path string or a mapping with path:")
    unknown = sorted(set(value) - {"path", "revision"})
    if unknown:
        raise ValueError(f"{what}: unknown key {unknown[0]!r} (path, revision)")
    path, revision = value.get("path"), value.get("revision")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{what}: path must be a non-empty string")
    if revision is not None and not isinstance(revision, str):
        raise ValueError(f"{what}: revision must be a string")
    return path, revision or None


def parse_model_ref(value: Any) -> ModelRef:
    """Parse any form mergekit's ModelReference accepts, or raise ValueError saying why.

    `override_architecture` is refused: it cannot be written in the string form that the
    rest of llm-evo (labels, reshard, parents) passes around.
    """
    if isinstance(value, ModelRef):
        return value
    if isinstance(value, str):
        chunks = value.split("+")
        if len(chunks) > 2:
            raise ValueError(f"can't parse model reference {value!r} (more than one '+')")
        value = {"model": chunks[0], "lora": chunks[1] if len(chunks) == 2 else None}
    if not isinstance(value, dict):
        raise ValueError("a model reference is a string or a mapping with model:")
    if value.get("override_architecture") is not None:
        raise ValueError("override_architecture is not supported (name a model whose "
                         "config.json has the architecture you want)")
    unknown = sorted(set(value) - {"model", "lora", "override_architecture"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} in a model reference (model, lora)")
    if value.get("model") is None:
        raise ValueError("a model reference mapping needs model:")
    path, revision = _model_path(value["model"], "model")
    lora = lora_revision = None
    if value.get("lora") is not None:
        lora, lora_revision = _model_path(value["lora"], "lora")
    return ModelRef(path, revision, lora, lora_revision)


def canonical_model_ref(value: Any) -> str:
    """The mergekit string form of a reference (a pydantic before-validator)."""
    return str(parse_model_ref(value))


def local_path(path: str, roots: list[Path | None]) -> str:
    """`path` made absolute under the first of `roots` where it exists; a hub id or a
    missing path stays as it is."""
    for root in roots:
        if root is None:
            continue
        candidate = (root / path).expanduser()
        if candidate.exists():
            return str(candidate.resolve())
    return path


def resolve_local(reference: str, roots: list[Path | None]) -> str:
    """The reference with its local paths (model and adapter) made absolute, each looked up
    under `roots` in order; hub ids and missing paths stay as they are."""
    ref = parse_model_ref(reference)
    lora = local_path(ref.lora, roots) if ref.lora else None
    return str(ref.with_paths(local_path(ref.path, roots), lora))


def parent_job_source(reference: str, dtype: str = "float32") -> dict[str, Any]:
    """What scores a source model as a parent (Job fields): its path, or, for a reference
    with a revision or a LoRA, a passthrough merge of it (mergekit fetches the revision and
    merges the adapter, which lm-eval given a bare path could not)."""
    try:
        ref = parse_model_ref(reference)
    except ValueError:
        return {"model_path": reference}
    if ref.plain:
        return {"model_path": reference}
    return {"merge_config": {"merge_method": "passthrough", "models": [{"model": reference}],
                             "dtype": dtype}}
