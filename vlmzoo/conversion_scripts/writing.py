"""Writing a conversion without ever losing data (docs/design.md §6).

Owns the output side of a conversion:

- :func:`check_output`: refuses, before any work, an ``--output`` that is an input directory, an existing
  regular file, or a directory already holding weights or a config (unless ``--overwrite``);
- :class:`StagingDirectory`: a hidden directory beside ``--output`` (same parent, so moves are renames on one
  file system) that receives the whole conversion; :meth:`StagingDirectory.commit` moves it into place only
  when the conversion is complete and verified, replacing existing files only with ``--overwrite`` (the files
  it replaces are kept aside until every move has succeeded, and put back if one fails). A failing run
  removes the staging directory: ``--output`` is unchanged, no empty directory or temporary file is left;
- :class:`ShardedSafetensorsWriter`: the shard plan and index come from ``huggingface_hub``'s
  ``split_torch_state_dict_into_shards`` (applied to meta tensors of the planned layout, in writing order);
  tensors are streamed in and each shard is saved as soon as its last tensor arrives, so at most about one
  shard is held in memory besides the source shard being read.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Sequence

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConversionError, describe_os_error, os_error
from .key_tables import OutputTensor

# files that make a directory a checkpoint: without --overwrite, an --output holding one is refused up front
CHECKPOINT_FILE_PATTERNS = (
    "config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
)  # fmt: skip
WEIGHT_FILE_PATTERNS = CHECKPOINT_FILE_PATTERNS[1:]
SAFETENSORS_INDEX = "model.safetensors.index.json"


def parse_shard_size(text: str) -> int:
    """``--max-shard-size``: bytes, or a number with a unit (KB, MB, GB, TB; powers of 1000)."""
    value = str(text).strip()
    try:
        size = int(value) if value.isdigit() else parse_size_to_int(value)
    except ValueError:
        raise ConversionError(f"--max-shard-size '{text}' is not a size (e.g. 5GB, 500MB or a number of bytes)") from None
    if size <= 0:
        raise ConversionError(f"--max-shard-size '{text}' must be larger than 0")
    return size


def _existing(directory: Path, patterns: Sequence[str]) -> list[str]:
    return sorted({path.name for pattern in patterns for path in directory.glob(pattern)})


def check_output(output: str | Path, inputs: Sequence[str | Path], overwrite: bool) -> Path:
    """``ConversionError`` for an ``--output`` the conversion must not (or cannot) write; changes nothing."""
    output = Path(output)
    if any(output.resolve() == Path(directory).resolve() for directory in inputs):
        raise ConversionError(f"--output '{output}' is an input directory; write the conversion elsewhere")
    if output.exists() or output.is_symlink():
        if not output.is_dir():
            raise ConversionError(f"--output '{output}' is an existing file, not a directory")
        if not os.access(output, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot write into --output '{output}': permission denied")
        existing = _existing(output, CHECKPOINT_FILE_PATTERNS)
        if existing and not overwrite:
            raise ConversionError(
                f"--output '{output}' already holds {existing}; pass --overwrite to replace them (nothing was changed)"
            )
    else:
        ancestor = _nearest_existing(output.parent)
        if not ancestor.is_dir():
            raise ConversionError(f"cannot create --output '{output}': '{ancestor}' is a file, not a directory")
    return output


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class StagingDirectory:
    """A hidden directory beside ``--output`` that receives the conversion, then moves into ``--output``.

    Use as a context manager: leaving it with an exception (or without :meth:`commit`) deletes the staging
    directory, so a failed conversion leaves nothing behind.
    """

    def __init__(self, output: str | Path, overwrite: bool):
        self.output = Path(output).absolute()
        self.overwrite = overwrite
        # the same parent when it exists (a rename, never a copy); else its nearest existing ancestor
        self.parent = _nearest_existing(self.output.parent)
        self.path = self._make_hidden_dir("staging")
        self.committed = False

    def _make_hidden_dir(self, kind: str) -> Path:
        while True:
            path = self.parent / f".{self.output.name}.vlmzoo-{kind}-{secrets.token_hex(4)}"
            try:
                os.mkdir(path)  # honours the umask, so a committed new --output gets the usual permissions
                return path
            except FileExistsError:
                continue
            except OSError as error:
                raise ConversionError(
                    f"cannot write beside --output '{self.output}' (in '{self.parent}'): {describe_os_error(error)}"
                ) from None

    def __enter__(self) -> StagingDirectory:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed:
            self.discard()

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def replaced_files(self, names: Sequence[str]) -> list[str]:
        """Which of ``names`` already exist in ``--output``; refused (``ConversionError``) without ``--overwrite``."""
        output = self.output
        if not output.exists():
            return []
        replaced = sorted(name for name in set(names) if (output / name).exists() or (output / name).is_symlink())
        if replaced and not self.overwrite:
            raise ConversionError(
                f"--output '{output}' already holds {replaced}; pass --overwrite to replace them (nothing was changed)"
            )
        return replaced

    def commit(self) -> list[str]:
        """Move the staged files into ``--output``; returns the names of the files replaced (``--overwrite``)."""
        output = self.output
        if not output.exists():
            try:
                output.parent.mkdir(parents=True, exist_ok=True)
                os.rename(self.path, output)
            except OSError as error:
                raise os_error("create --output", output, error) from None
            self.committed = True
            return []
        staged = sorted(self.path.iterdir())
        names = {path.name for path in staged}
        replaced = self.replaced_files(names)
        stale = [name for name in _existing(output, WEIGHT_FILE_PATTERNS) if name not in names] if self.overwrite else []
        backup = self._make_hidden_dir("replaced")
        moved_out: list[str] = []
        moved_in: list[str] = []
        try:
            for name in replaced + stale:
                os.rename(output / name, backup / name)
                moved_out.append(name)
            for path in staged:
                os.rename(path, output / path.name)
                moved_in.append(path.name)
        except OSError as error:  # put everything back as it was
            for name in reversed(moved_in):
                os.rename(output / name, self.path / name)
            for name in reversed(moved_out):
                os.rename(backup / name, output / name)
            shutil.rmtree(backup, ignore_errors=True)
            raise os_error("write into --output", output, error) from None
        shutil.rmtree(backup, ignore_errors=True)
        self.path.rmdir()
        self.committed = True
        return replaced + stale


class ShardedSafetensorsWriter:
    """Streams tensors into the shards ``huggingface_hub`` planned for ``layout`` (+ index when sharded)."""

    def __init__(self, directory: str | Path, layout: dict[str, OutputTensor], max_shard_size: int):
        self.directory = Path(directory)
        self.layout = layout
        meta = {name: torch.empty(spec.shape, dtype=spec.dtype, device="meta") for name, spec in layout.items()}
        self.split = split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
        self._buffers: dict[str, dict[str, torch.Tensor]] = {name: {} for name in self.split.filename_to_tensors}
        self._written: list[str] = []

    @property
    def file_names(self) -> list[str]:
        """The files :meth:`close` will have written (shards, and the index when sharded)."""
        return list(self.split.filename_to_tensors) + ([SAFETENSORS_INDEX] if self.split.is_sharded else [])

    def add(self, name: str, tensor: torch.Tensor) -> None:
        filename = self.split.tensor_to_filename[name]
        buffer = self._buffers[filename]
        if name in buffer:
            raise RuntimeError(f"'{name}' was written twice")
        tensor = tensor.detach().contiguous()
        # safetensors refuses tensors sharing memory (tied weights in `.bin` files, views of a larger storage)
        size = tensor.numel() * tensor.element_size()
        if tensor.untyped_storage().nbytes() != size or any(t.data_ptr() == tensor.data_ptr() for t in buffer.values()):
            tensor = tensor.clone()
        buffer[name] = tensor
        if len(buffer) == len(self.split.filename_to_tensors[filename]):
            path = self.directory / filename
            try:
                save_file(buffer, path, metadata={"format": "pt"})
            except OSError as error:
                raise os_error("write", path, error) from None
            self._buffers[filename] = {}
            self._written.append(filename)

    def close(self) -> list[Path]:
        """Write the index when there are several shards; returns the shard paths."""
        unwritten = [name for name in self.split.filename_to_tensors if name not in self._written]
        if unwritten:
            raise RuntimeError(f"shards {unwritten} did not receive all their tensors")
        if self.split.is_sharded:
            index = {"metadata": self.split.metadata, "weight_map": dict(sorted(self.split.tensor_to_filename.items()))}
            path = self.directory / SAFETENSORS_INDEX
            try:
                path.write_text(json.dumps(index, indent=2) + "\n")
            except OSError as error:
                raise os_error("write", path, error) from None
        return [self.directory / name for name in self.split.filename_to_tensors]

    def verify(self) -> None:
        """Re-read every shard header (and the index): the names, shapes and dtypes planned, nothing else."""
        found: dict[str, tuple[tuple[int, ...], str]] = {}
        for filename in self.split.filename_to_tensors:
            with safe_open(self.directory / filename, framework="pt") as handle:
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    found[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
        planned = {name: spec.shape for name, spec in self.layout.items()}
        if {name: shape for name, (shape, _) in found.items()} != planned:
            raise RuntimeError(f"the shards written to {self.directory} do not hold the planned tensors")
        if self.split.is_sharded:
            index = json.loads((self.directory / SAFETENSORS_INDEX).read_text())
            if index["weight_map"] != self.split.tensor_to_filename:
                raise RuntimeError(f"{SAFETENSORS_INDEX} does not match the shards written")


__all__ = [
    "CHECKPOINT_FILE_PATTERNS",
    "ShardedSafetensorsWriter",
    "StagingDirectory",
    "check_output",
    "parse_shard_size",
]
