"""Copy input models once into the run's storage path as safetensors shards (`--reshard`).

Every on-disk merge reads every input tensor. Reading them from hub caches, network
mounts or pickled `.bin` checkpoints costs each candidate again; one local safetensors
copy per input model, made before the workers start, pays that once. Tensors are copied
bit for bit (no dtype change, unlike mergekit-evolve's bfloat16 reshard), so scores do
not depend on the flag.
"""

from __future__ import annotations

import binascii
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
DONE_MARKER = ".llm_evo_resharded"


def reshard_dir_name(reference: str) -> str:
    """A folder name that is readable and unique per model reference."""
    base = os.path.basename(reference.rstrip("/")) or "model"
    return f"{base}_{binascii.crc32(reference.encode()):08x}"


def reshard_models(models: Iterable[str], out_root: str | Path, *,
                   shard_size: int = 5 * 10**9) -> dict[str, str]:
    """{reference: local resharded copy}; existing complete copies are reused."""
    out_root = Path(out_root)
    mapping = {}
    for ref in dict.fromkeys(models):
        dest = out_root / reshard_dir_name(ref)
        if not (dest / DONE_MARKER).is_file():
            _reshard_one(ref, dest, shard_size)
        mapping[ref] = str(dest)
    return mapping


def _reshard_one(reference: str, dest: Path, shard_size: int) -> None:
    from mergekit.common import ModelReference
    from mergekit.io.tensor_writer import TensorWriter

    model = ModelReference.model_validate(reference)
    if model.lora is not None:
        raise ValueError(f"{reference}: resharding a model with a LoRA is not supported")
    src = Path(model.local_path())
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in src.iterdir():
        name = item.name.lower()
        if item.is_file() and not name.endswith(WEIGHT_SUFFIXES) and not name.endswith(
                ".index.json"):
            shutil.copy2(item, tmp / item.name)
    loader = model.lazy_loader(lazy_unpickle=True)
    writer = TensorWriter(str(tmp), max_shard_size=shard_size, safe_serialization=True)
    for name in sorted(loader.index.tensor_paths):
        writer.save_tensor(name, loader.get_tensor(name))
    writer.finalize()
    loader.flush()
    (tmp / DONE_MARKER).write_text(reference + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
