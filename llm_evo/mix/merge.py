"""The weighted average itself: mergekit's `linear` merge, one tensor at a time.

mergekit streams the merge (lazy loading, one output tensor planned and written after
another), so memory holds a few tensors, not N models. sentence-transformers keeps its
pooling and normalisation modules beside the weights; mergekit knows nothing of them, so
they are copied from the first model, which makes a mixed embedding model load in
sentence-transformers as its sources do.
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


def _copy_sentence_transformers(source: Path, out: Path) -> list[str]:
    """Copy sentence-transformers' module files; warn about modules that carry weights."""
    warnings = []
    for name in ST_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    for sub in sorted(p for p in source.iterdir() if p.is_dir() and p.name[:1].isdigit()):
        if any(f.suffix in WEIGHT_SUFFIXES for f in sub.rglob("*")):
            warnings.append(f"{sub.name}: sentence-transformers module with weights, copied "
                            f"from {source.name}, not averaged")
        shutil.copytree(sub, out / sub.name, dirs_exist_ok=True)
    return warnings


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
    warnings = _copy_sentence_transformers(Path(paths[0]), out)
    return MixResult(out, paths, tuple(float(w) for w in weights), normalize, tuple(warnings))
