"""Reading the inputs of a conversion: checkpoint directories, JSON files, configs, tokenizers (docs/design.md §6).

Owns :class:`CheckpointReader`, which finds the weights of a directory (safetensors preferred over ``.bin``,
an ``*.index.json`` over a single file), lists every tensor's file, shape and dtype without loading it
(safetensors headers; ``.bin`` files memory-mapped, read with ``torch.load(weights_only=True)``, which never
unpickles arbitrary objects), and then hands the tensors out one at a time, so a checkpoint is never held
twice in memory. Every problem with an input (missing, unreadable, truncated or corrupt files, an index that
contradicts its shards) is a :class:`~.errors.ConversionError` naming the file and the cause.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoConfig, AutoTokenizer, PreTrainedConfig

from .errors import ConversionError, one_line, os_error

# files that sit next to `.bin` weights but are not weights
NON_WEIGHT_BIN_FILES = re.compile(r"(training_args|optimizer|scheduler|rng_state|trainer_state)[^/]*\.bin$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
_TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64, "BOOL": torch.bool, "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E4M3FNUZ": torch.float8_e4m3fnuz,
    "F8_E5M2FNUZ": torch.float8_e5m2fnuz,
    **({"F8_E8M0": torch.float8_e8m0fnu} if hasattr(torch, "float8_e8m0fnu") else {}),
}  # fmt: skip


# ----- files ----------------------------------------------------------------------------------------------
def check_readable(path: Path) -> None:
    """``ConversionError`` naming ``path`` and the cause unless the file can be opened for reading."""
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise os_error("read", path, error) from None


def read_text(path: str | Path) -> str:
    """A text file; unreadable or non-UTF-8 files are a ``ConversionError`` naming the file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise os_error("read", path, error) from None
    except UnicodeDecodeError:
        raise ConversionError(f"'{path}' is not UTF-8 text (corrupt file?)") from None


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; missing, unreadable or invalid files are a ``ConversionError``."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"missing {path.name} in '{path.parent}'")
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConversionError(
            f"'{path}' is not valid JSON ({error.msg} at line {error.lineno}, column {error.colno}; truncated or corrupt?)"
        ) from None
    if not isinstance(value, dict):
        raise ConversionError(f"'{path}' must hold a JSON object, got {type(value).__name__}")
    return value


def load_config(directory: str | Path, what: str = "input") -> PreTrainedConfig:
    """``AutoConfig.from_pretrained(directory)`` with the file checked first, so errors name config.json."""
    path = Path(directory) / "config.json"
    read_json(path)
    try:
        return AutoConfig.from_pretrained(directory)
    except (ValueError, KeyError) as error:  # unknown / missing model_type, invalid field values
        raise ConversionError(f"the {what} config '{path}' cannot be loaded: {one_line(error)}") from None


def load_encoder_config(directory: str | Path, name: str) -> PreTrainedConfig:
    """The config of an ``--encoder NAME=DIR`` model: its vision config when it is a full (e.g. CLIP) model."""
    config = load_config(directory, what=f"--encoder {name}")
    return getattr(config, "vision_config", None) or config


def load_tokenizer_if_present(directory: str | Path):
    """The tokenizer saved in ``directory``, or None when it holds no tokenizer files."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    for name in _TOKENIZER_JSON_FILES:  # invalid JSON would surface as an anonymous tokenizers exception
        if (directory / name).is_file():
            read_json(directory / name)
    for path in directory.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")) and path.is_file():
            check_readable(path)
    return AutoTokenizer.from_pretrained(directory)


# ----- weights --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorInfo:
    """Where a source tensor lives and what it is, known before it is loaded."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype


def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped where the format allows; anything but name -> tensor is refused."""
    check_readable(path)
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(
            f"'{path}' is not a weights-only PyTorch file (corrupt, or it holds more than tensors, which "
            f"torch.load(weights_only=True) refuses to unpickle): {first}"
        ) from None
    except (RuntimeError, EOFError) as error:  # torch's reader: bad zip archive, truncated stream
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ConversionError(f"'{path}' is truncated or corrupt: {first}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConversionError(f"'{path}' must hold a flat dict of name -> tensor, got {type(state).__name__}")
    return state


def _safetensors_infos(path: Path) -> dict[str, TensorInfo]:
    check_readable(path)
    try:
        with safe_open(path, framework="pt") as handle:
            infos = {}
            for key in handle.keys():
                tensor_slice = handle.get_slice(key)
                dtype = _SAFETENSORS_DTYPES.get(tensor_slice.get_dtype())
                if dtype is None:
                    raise ConversionError(
                        f"'{path}' holds '{key}' of dtype {tensor_slice.get_dtype()}, which the converter does not read "
                        f"(it reads {', '.join(_SAFETENSORS_DTYPES)})"
                    )
                infos[key] = TensorInfo(path, tuple(tensor_slice.get_shape()), dtype)
            return infos
    except SafetensorError as error:
        raise ConversionError(f"'{path}' is truncated or corrupt: {one_line(error)}") from None


def _bin_infos(path: Path) -> dict[str, TensorInfo]:
    return {key: TensorInfo(path, tuple(t.shape), t.dtype) for key, t in _load_bin(path).items()}


class CheckpointReader:
    """The tensors of one checkpoint directory: safetensors preferred over ``.bin``, index over single file."""

    def __init__(self, directory: str | Path, label: str = "checkpoint"):
        self.directory = Path(directory)
        self.label = label
        if not self.directory.exists():
            raise ConversionError(f"{label} directory '{self.directory}' does not exist")
        if not self.directory.is_dir():
            raise ConversionError(f"{label} '{self.directory}' is a file, not a checkpoint directory")
        try:
            self._names = sorted(path.name for path in self.directory.iterdir())
        except OSError as error:
            raise os_error(f"list the {label} directory", self.directory, error) from None
        self.index_file: Path | None = None
        self.shards, weight_map = self._locate()
        self.tensors: dict[str, TensorInfo] = self._scan(weight_map)

    def _glob(self, suffix: str) -> list[Path]:
        return [self.directory / name for name in self._names if name.endswith(suffix)]

    def _locate(self) -> tuple[list[Path], dict[str, str] | None]:
        directory = self.directory
        for suffix in (".safetensors", ".bin"):
            indexes = self._glob(f"{suffix}.index.json")
            if len(indexes) > 1:
                raise ConversionError(f"'{directory}' holds several {suffix} indexes ({[p.name for p in indexes]}); keep one")
            if indexes:
                self.index_file = indexes[0]
                weight_map = read_json(indexes[0]).get("weight_map")
                if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
                ):
                    raise ConversionError(
                        f"'{indexes[0]}' is corrupt: its 'weight_map' must map tensor names to shard file names"
                    )
                shards = [directory / name for name in sorted(set(weight_map.values()))]
                absent = [p.name for p in shards if not p.is_file()]
                if absent:
                    raise ConversionError(f"'{indexes[0]}' names shards that are not in '{directory}': {absent}")
                return shards, weight_map
            files = [p for p in self._glob(suffix) if suffix != ".bin" or NON_WEIGHT_BIN_FILES.search(p.name) is None]
            if len(files) > 1:
                raise ConversionError(
                    f"'{directory}' holds several {suffix} files ({[p.name for p in files]}) but no "
                    f"*{suffix}.index.json saying which tensor lives where"
                )
            if files:
                return files, None
        raise ConversionError(
            f"no weights found in {self.label} directory '{directory}' (expected *.safetensors or *.bin, "
            f"single or sharded with an *.index.json)"
        )

    def _scan(self, weight_map: dict[str, str] | None) -> dict[str, TensorInfo]:
        tensors: dict[str, TensorInfo] = {}
        for shard in self.shards:
            infos = _safetensors_infos(shard) if shard.suffix == ".safetensors" else _bin_infos(shard)
            for key, info in infos.items():
                if key in tensors:
                    raise ConversionError(f"tensor '{key}' is in both '{tensors[key].file}' and '{shard}'")
                tensors[key] = info
        if weight_map is not None:
            for key, file_name in weight_map.items():
                info = tensors.get(key)
                if info is None or info.file.name != Path(file_name).name:
                    where = f"it is in {info.file.name}" if info is not None else "no shard holds it"
                    raise ConversionError(f"'{self.index_file}' is corrupt: it lists '{key}' in {file_name}, but {where}")
            unlisted = [key for key in tensors if key not in weight_map]
            if unlisted:
                raise ConversionError(
                    f"'{self.index_file}' is corrupt: it does not list {len(unlisted)} tensors its shards hold "
                    f"(e.g. '{unlisted[0]}' in {tensors[unlisted[0]].file.name})"
                )
        return tensors

    def keys(self) -> list[str]:
        """Every tensor name, in the order :meth:`iter_tensors` yields them."""
        return list(self.tensors)

    def read(self, key: str) -> torch.Tensor:
        """One tensor, loaded on its own (a ``.bin`` shard is loaded whole)."""
        info = self.tensors[key]
        if info.file.suffix != ".safetensors":
            return _load_bin(info.file)[key]
        check_readable(info.file)
        try:
            with safe_open(info.file, framework="pt") as handle:
                return handle.get_tensor(key)
        except SafetensorError as error:
            raise ConversionError(f"'{info.file}' is truncated or corrupt: {one_line(error)}") from None

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor, one shard open at a time (safetensors: one tensor at a time)."""
        by_shard: dict[Path, list[str]] = {}
        for key, info in self.tensors.items():
            by_shard.setdefault(info.file, []).append(key)
        for shard, keys in by_shard.items():
            if shard.suffix == ".safetensors":
                check_readable(shard)
                try:
                    with safe_open(shard, framework="pt") as handle:
                        for key in keys:
                            yield key, handle.get_tensor(key)
                except SafetensorError as error:
                    raise ConversionError(f"'{shard}' is truncated or corrupt: {one_line(error)}") from None
            else:
                state = _load_bin(shard)
                for key in keys:
                    yield key, state.pop(key)
                del state


__all__ = [
    "CheckpointReader",
    "TOKENIZER_FILES",
    "TensorInfo",
    "check_readable",
    "load_config",
    "load_encoder_config",
    "load_tokenizer_if_present",
    "read_json",
    "read_text",
]
