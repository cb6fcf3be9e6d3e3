"""Read a checkpoint one tensor at a time: safetensors (single file or sharded with an index),
with PyTorch `.bin` files as a fallback.

Nothing here holds a whole model. A safetensors tensor is a zero-copy view of a file mapping
that is opened for that one read and unmapped when the caller drops the tensor, so pages that
were read stop counting against the process. `.bin` shards are loaded with `mmap=True` and
dropped again after a bounded number of bytes for the same reason.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from llm_evo.errors import ConfigError

if TYPE_CHECKING:
    import torch

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
_BIN_SUFFIXES = (".bin", ".pt", ".pth")
# Files next to weights that are not weights.
_NOT_WEIGHTS = re.compile(
    r"^(training_args|optimizer|scheduler|rng_state.*|trainer_state)\.(bin|pt|pth)$"
)
# safetensors dtype codes -> torch dtype names. Anything else (ints, bools) is not a weight.
_FLOAT_CODES = {
    "BF16": "bfloat16",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}
# Bytes per element of the float dtypes (fp8 and raw codes: 1).
ELEMENT_SIZES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}
_OUTPUT_EMBEDDINGS = ("lm_head.weight", "embed_out.weight", "output.weight")
_INPUT_EMBEDDINGS = (
    "embed_tokens.weight",
    "wte.weight",
    "word_embeddings.weight",
    "embed_in.weight",
    "tok_embeddings.weight",
)
# A .bin shard is dropped (and its mapping with it) after this many bytes were read from it.
_BIN_RECYCLE_BYTES = 512 * 2**20


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape and dtype of one stored tensor, known without reading its data."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name ("bfloat16") for floats, the raw code otherwise
    file: Path
    offset: int | None = None  # safetensors: where the tensor's bytes start in `file`

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def element_size(self) -> int:
        return ELEMENT_SIZES.get(self.dtype, 1)

    @property
    def is_float(self) -> bool:
        return self.dtype in _FLOAT_CODES.values()


def resolve_model_path(spec: str | os.PathLike[str]) -> Path:
    """A local directory or file, else a repo id already in the Hugging Face cache (no download)."""
    path = Path(spec).expanduser()
    if path.exists():
        if not os.access(path, os.R_OK):
            raise ConfigError(f"model path is not readable: {spec}")
        return path
    text = str(spec)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", text) and not text.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(text, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            pass
        raise ConfigError(
            f"model path not found: {spec} (not a local path, and not in the Hugging Face cache;"
            f" download it first, e.g. `hf download {spec}`)"
        )
    raise ConfigError(f"model path not found: {spec}")


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def _index_files(index_path: Path) -> tuple[list[Path], dict[str, str]]:
    """Shard files named by an index, in order, and its weight map."""
    weight_map = _load_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError(f"{index_path}: missing or empty 'weight_map'")
    files: list[Path] = []
    for shard in dict.fromkeys(sorted(weight_map.values())):
        shard_path = index_path.parent / shard
        if not shard_path.is_file():
            raise ConfigError(f"{index_path}: shard {shard} is listed but missing")
        files.append(shard_path)
    return files, weight_map


def _find_weights(path: Path) -> tuple[str, list[Path], dict[str, str] | None]:
    """Return (format, files, weight map or None) for a checkpoint directory or file."""
    if path.is_file():
        name = path.name
        if name.endswith(".safetensors"):
            return "safetensors", [path], None
        if name.endswith(".index.json"):
            files, weight_map = _index_files(path)
            fmt = "safetensors" if files[0].name.endswith(".safetensors") else "bin"
            return fmt, files, weight_map
        if name.endswith(_BIN_SUFFIXES):
            return "bin", [path], None
        raise ConfigError(f"{path}: not a safetensors, index or .bin file")
    if (path / SAFETENSORS_INDEX).is_file():
        return "safetensors", *_index_files(path / SAFETENSORS_INDEX)
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if len(indexes) == 1:
        return "safetensors", *_index_files(indexes[0])
    shards = sorted(path.glob("model*.safetensors")) or sorted(path.glob("*.safetensors"))
    if shards:
        return "safetensors", shards, None
    if (path / BIN_INDEX).is_file():
        return "bin", *_index_files(path / BIN_INDEX)
    bins = sorted(path.glob("pytorch_model*.bin")) or sorted(
        p for p in path.iterdir() if p.suffix in _BIN_SUFFIXES and not _NOT_WEIGHTS.match(p.name)
    )
    if bins:
        return "bin", bins, None
    raise ConfigError(f"{path}: no *.safetensors or .bin weights found")


class CheckpointReader:
    """Names, shapes and dtypes of a checkpoint up front; tensor data one tensor at a time."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.spec = str(path)
        self.path = resolve_model_path(path)
        self.format, self.files, weight_map = _find_weights(self.path)
        self._infos: dict[str, TensorInfo] = {}
        self.tied: dict[str, str] = {}  # alias name -> the tensor it shares storage with
        self._bin_cache: tuple[Path, dict, int] | None = None
        if self.format == "safetensors":
            self._scan_safetensors(weight_map)
            self._tied_from_config()
        else:
            self._scan_bin(weight_map)

    # -- metadata -------------------------------------------------------------------------
    def _add(self, info: TensorInfo) -> None:
        if info.name in self._infos:
            other = self._infos[info.name].file.name
            raise ConfigError(
                f"{self.path}: tensor {info.name} is stored in both {other} and {info.file.name}"
            )
        self._infos[info.name] = info

    def _scan_safetensors(self, weight_map: dict[str, str] | None) -> None:
        from safetensors import safe_open

        for file in self.files:
            try:
                with safe_open(str(file), framework="numpy") as fh:
                    offsets = _data_offsets(file)
                    for name in fh.offset_keys():
                        if weight_map is not None and weight_map.get(name) != file.name:
                            continue
                        sl = fh.get_slice(name)
                        code = sl.get_dtype()
                        dtype = _FLOAT_CODES.get(code, code)
                        self._add(TensorInfo(name, tuple(sl.get_shape()), dtype, file,
                                             offsets.get(name)))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - safetensors raises several types
                raise ConfigError(
                    f"{file}: not a readable safetensors file ({_one_line(exc)})"
                ) from exc
        self._check_index(weight_map)

    def _scan_bin(self, weight_map: dict[str, str] | None) -> None:
        for file in self.files:
            state = self._load_bin(file)
            seen: dict[tuple, str] = {}
            for name, t in state.items():
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue
                self._add(
                    TensorInfo(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), file)
                )
                key = (
                    t.untyped_storage().data_ptr(),
                    t.storage_offset(),
                    tuple(t.shape),
                    t.stride(),
                )
                if key in seen:
                    self.tied[name] = seen[key]
                else:
                    seen[key] = name
            del state
        self._check_index(weight_map)

    def _check_index(self, weight_map: dict[str, str] | None) -> None:
        if weight_map is None:
            return
        for name, shard in weight_map.items():
            if name not in self._infos:
                raise ConfigError(
                    f"{self.path}: index lists {name} in {shard}, but the shard lacks it"
                )

    def _tied_from_config(self) -> None:
        """With `tie_word_embeddings`, a stored output embedding is an alias of the input one."""
        config = (self.path if self.path.is_dir() else self.path.parent) / "config.json"
        if not config.is_file() or _load_json(config).get("tie_word_embeddings") is not True:
            return
        inputs = [n for n in self._infos if n.endswith(_INPUT_EMBEDDINGS)]
        for out in _OUTPUT_EMBEDDINGS:
            if out in self._infos and len(inputs) == 1:
                if self._infos[out].shape == self._infos[inputs[0]].shape:
                    self.tied[out] = inputs[0]

    # -- access ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Tensor names in storage order (shard by shard, by offset), for sequential reads."""
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        return self._infos[name]

    def read(self, name: str) -> torch.Tensor:
        """The tensor on the CPU in its stored dtype; drop it to release its pages."""
        info = self._infos[name]
        if self.format == "safetensors":
            from safetensors import safe_open

            try:
                # One mapping per read: it is unmapped as soon as the tensor is dropped.
                with safe_open(str(info.file), framework="pt") as fh:
                    return fh.get_tensor(name)
            except Exception as exc:  # noqa: BLE001
                raise ConfigError(
                    f"{info.file}: cannot read tensor {name} ({_one_line(exc)})"
                ) from exc
        return self._read_bin(info)

    def _read_bin(self, info: TensorInfo) -> torch.Tensor:
        if (
            self._bin_cache is None
            or self._bin_cache[0] != info.file
            or self._bin_cache[2] > _BIN_RECYCLE_BYTES
        ):
            self._bin_cache = None  # drop the old mapping before opening the next
            self._bin_cache = (info.file, self._load_bin(info.file), 0)
        file, state, served = self._bin_cache
        tensor = state[info.name]
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        self._bin_cache = (file, state, served + tensor.numel() * tensor.element_size())
        return tensor

    def _load_bin(self, file: Path) -> dict:
        import torch

        try:
            try:
                state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc).lower() and "zip" not in str(exc).lower():
                    raise
                # Legacy (pre-zip) format cannot be memory-mapped: the shard is loaded whole.
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"{file}: not a readable PyTorch weights file ({_one_line(exc)})"
            ) from exc
        if (
            isinstance(state, dict)
            and "state_dict" in state
            and isinstance(state["state_dict"], dict)
        ):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ConfigError(f"{file}: expected a state dict (name -> tensor)")
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}

    def close(self) -> None:
        self._bin_cache = None


def _data_offsets(file: Path) -> dict[str, int]:
    """Absolute byte offset of each tensor in a safetensors file (8-byte length, JSON header,
    then the data), read from the header that safe_open has just validated."""
    with open(file, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    start = 8 + size
    return {name: start + int(meta["data_offsets"][0]) for name, meta in header.items()
            if name != "__metadata__"}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
