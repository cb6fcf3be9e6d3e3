"""The weighted average itself: mergekit's `linear` merge, one tensor at a time.

mergekit streams the merge (lazy loading, one output tensor planned and written after
another), so memory holds a few tensors, not N models. sentence-transformers keeps its
pooling and normalisation modules beside the weights; mergekit knows nothing of them, so
they are copied from the first model, which makes a mixed embedding model load in
sentence-transformers as its sources do. Modules with weights of their own (a `2_Dense`
projection) are averaged with the same weights, tensor by tensor, where every model has
them in the same shapes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_evo.errors import ConfigError

# sentence-transformers' files next to a transformers checkpoint (none holds weights).
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class MixResult:
    """Where the mix went and how it was made; `warnings` name what was not averaged."""

    out: Path
    models: tuple[str, ...]
    weights: tuple[float, ...]
    normalize: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)


def check_models(models: Sequence[str]) -> tuple[str, ...]:
    """Absolute paths of local model folders; ConfigError names the first bad one."""
    if len(models) < 2:
        raise ConfigError(f"MODELS: mixing needs at least 2 models, got {len(models)}")
    out: list[str] = []
    archs: list[list[str]] = []
    for model in models:
        path = Path(model).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{model}: model folder not found")
        config = path / "config.json"
        if not config.is_file():
            raise ConfigError(f"{model}: not a model folder (no config.json)")
        try:
            archs.append(json.loads(config.read_text()).get("architectures") or [])
        except (json.JSONDecodeError, AttributeError):
            raise ConfigError(f"{config}: malformed model config") from None
        out.append(str(path.resolve()))
        if archs[-1] != archs[0]:
            raise ConfigError(f"{model}: architecture {archs[-1]} differs from "
                              f"{models[0]}'s {archs[0]}; only like models can be mixed")
    if len(set(out)) != len(out):
        raise ConfigError("MODELS: a model is listed twice")
    return tuple(out)


def merge_config_dict(models: Sequence[str], weights: Sequence[float], normalize: bool,
                      dtype: str | None = None) -> dict:
    """The mergekit-yaml mapping of the mix (also written to the output as mergekit_config.yml)."""
    config: dict = {
        "merge_method": "linear",
        "models": [{"model": m, "parameters": {"weight": float(w)}}
                   for m, w in zip(models, weights, strict=True)],
        "parameters": {"normalize": normalize},
    }
    if dtype:
        config["dtype"] = dtype
    return config


def _copy_sentence_transformers(sources: Sequence[Path], out: Path, weights: Sequence[float],
                                normalize: bool) -> list[str]:
    """Copy sentence-transformers' module files from the first model, averaging the weight
    files of modules that have them; warn where they cannot be averaged."""
    source = sources[0]
    warnings = []
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    for sub in sorted(p for p in source.iterdir() if p.is_dir() and p.name[:1].isdigit()):
        shutil.copytree(sub, out / sub.name, dirs_exist_ok=True)
        for f in sorted(f for f in sub.rglob("*") if f.suffix in WEIGHT_SUFFIXES):
            rel = f.relative_to(source)
            problem = _average_weight_file([s / rel for s in sources], [s.name for s in sources],
                                           out / rel, weights, normalize)
            if problem:
                warnings.append(f"{rel}: {problem}; copied from {source.name}, not averaged")
    return warnings


def _average_weight_file(paths: Sequence[Path], labels: Sequence[str], out: Path,
                         weights: Sequence[float], normalize: bool) -> str | None:
    """out = sum(w_i * tensor_i) (over sum(w) with `normalize`), as mergekit's linear merge
    does; returns why not where the files differ (then `out` is left as it is)."""
    import torch

    missing = [label for p, label in zip(paths, labels, strict=True) if not p.is_file()]
    if missing:
        return "missing from " + ", ".join(missing)
    states = [_load_weights(p) for p in paths]
    first = states[0]
    for label, st in zip(labels[1:], states[1:], strict=True):
        if st.keys() != first.keys() or any(st[k].shape != first[k].shape for k in first):
            return f"tensor names or shapes differ in {label}"
    scale = sum(weights) if normalize else 1.0
    mixed = {}
    for name, tensor in first.items():
        if not tensor.is_floating_point():
            mixed[name] = tensor
            continue
        acc = sum(float(w) * st[name].to(torch.float32) for w, st in zip(weights, states,
                                                                           strict=True))
        mixed[name] = (acc / scale).to(tensor.dtype).contiguous()
    _save_weights(mixed, out)
    return None


def _load_weights(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _save_weights(state: dict, path: Path) -> None:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path), metadata={"format": "pt"})
        return
    import torch

    torch.save(state, path)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt", "added_tokens.json",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")


def _planner_class():  # noqa: ANN202 - a subclass of mergekit's MergePlanner
    """mergekit's planner, fixed for optional weights that have aliases.

    mergekit 0.1.5's `MergePlanner.plan_tensor` checks an optional weight with
    `[w.name] + (w.aliases or [])`, but `aliases` is a tuple, so every such weight raises
    TypeError: BertModel's `embeddings.position_ids` makes every BertModel merge fail. This
    subclass makes the same presence check (skip the tensor when no model has it under any
    name) and hands the weight on as present; mergekit itself is left untouched.
    """
    from mergekit.io.tasks import LoaderCache
    from mergekit.plan import MergePlanner

    class Planner(MergePlanner):
        def plan_tensor(self, weight, weights_in, models, cfg_reader):  # noqa: ANN001, ANN202
            if weight.optional:
                present = any(
                    name in LoaderCache().get(model).index.tensor_paths
                    for model, w_in in zip(models, weights_in, strict=True)
                    for name in (w_in.name, *(w_in.aliases or ()))
                )
                if not present:
                    return None
                weight = weight.model_copy(update={"optional": False})
            return super().plan_tensor(weight, weights_in, models, cfg_reader)

    return Planner


def _merge_to_disk(config, out: Path, options) -> None:  # noqa: ANN001 - mergekit types
    """mergekit's plan and executor, as `run_merge` drives them, with the planner above.

    The mix keeps every layer of like models, so the output's config and tokenizer are
    the first model's.
    """
    from mergekit.architecture import get_architecture_info
    from mergekit.graph import Executor
    from mergekit.io.tasks import LoaderCache

    arch_info = get_architecture_info(config, options)
    loader_cache = LoaderCache()
    loader_cache.setup(options=options)
    donor = config.referenced_models()[0]
    cfg_out = donor.config(trust_remote_code=options.trust_remote_code)
    for model in config.referenced_models():
        loader_cache.get(model)
    targets = _planner_class()(config, arch_info, options=options,
                               out_model_config=cfg_out).plan_to_disk(out_path=str(out))
    for _task, _value in Executor(targets=targets, math_device=options.device,
                                  storage_device="cpu").run(quiet=True):
        pass
    cfg_out.save_pretrained(str(out))
    (out / "mergekit_config.yml").write_text(config.to_yaml(), encoding="utf-8")
    source = Path(donor.model.path)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)


def mix_models(models: Sequence[str], weights: Sequence[float], out: str | Path, *,
               normalize: bool = True, dtype: str | None = None, force: bool = False,
               device: str = "cpu") -> MixResult:
    """Write the weighted average of `models` to `out` (a linear merge through mergekit).

    With `normalize`, mergekit divides by the weight sum; callers check the sum first
    (parse_weights) so that a typo is an error rather than a silently rescaled mix.
    """
    paths = check_models(models)
    if len(weights) != len(paths):
        raise ConfigError(f"--weights: {len(weights)} weight(s) for {len(paths)} model(s)")
    if normalize and abs(sum(weights)) < 1e-6:
        raise ConfigError("--weights: sum to about zero; a normalised mix would divide by it")
    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"{out}: output folder exists and is not empty (pass --force)")

    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(
        merge_config_dict(paths, weights, normalize, dtype))
    out.mkdir(parents=True, exist_ok=True)
    _merge_to_disk(config, out, MergeOptions(lazy_unpickle=True, quiet=True, device=device))
    warnings = _copy_sentence_transformers([Path(p) for p in paths], out, weights, normalize)
    return MixResult(out, paths, tuple(float(w) for w in weights), normalize, tuple(warnings))
