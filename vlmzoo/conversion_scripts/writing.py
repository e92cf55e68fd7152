"""Writing a conversion without ever losing data (docs/design.md §6).

Owns the output side of a conversion:

- :func:`check_output`: refuses, before any work, an ``--output`` that is empty (it would mean the current
  directory), an input directory, an existing regular file or dangling link, the current directory or one holding
  it, a mount point (a directory that a rename cannot replace), or a directory already holding weights or a
  config (unless ``--overwrite``);
- :func:`check_free_space`: refuses, before any work, a conversion whose tensors alone exceed the free space
  beside ``--output``;
- :class:`ShardedSafetensorsWriter`: the shard plan and index come from ``huggingface_hub``'s
  ``split_torch_state_dict_into_shards`` (applied to meta tensors of the planned layout, in writing order);
  tensors are streamed in and each shard is saved as soon as its last tensor arrives, so at most about one
  shard is held in memory besides the source shard being read. A failed write (a full disk) is an ``OSError``
  naming the shard, however the library reports it.

The staging directory and the swap that puts it in place as a whole live in ``swap.py``
(:class:`~.swap.StagingDirectory`, re-exported here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int
from safetensors import safe_open
from safetensors.torch import save_file

from .errors import ConversionError, as_os_error
from .key_tables import OutputTensor
from .swap import CHECKPOINT_FILE_PATTERNS, StagingDirectory, existing_entries, nearest_existing, swap_target

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


def check_output(output: str | Path, inputs: Sequence[str | Path], overwrite: bool) -> Path:
    """``ConversionError`` for an ``--output`` the conversion must not (or cannot) write; changes nothing."""
    if not str(output).strip():
        raise ConversionError("--output is empty (it would mean the current directory); name the directory to write "
                              "the conversion to, e.g. --output my-model-zoo")  # fmt: skip
    output = Path(output)
    if any(output.resolve() == Path(directory).resolve() for directory in inputs):
        raise ConversionError(f"--output '{output}' is an input directory; write the conversion elsewhere")
    if output.is_symlink() and not output.exists():
        raise ConversionError(f"--output '{output}' is a link to '{os.readlink(output)}', which does not exist")
    if output.exists():
        if not output.is_dir():
            raise ConversionError(f"--output '{output}' is an existing file, not a directory")
        target = swap_target(output)
        try:
            here = Path.cwd().resolve()
        except OSError:  # the current directory was removed
            here = None
        if here is not None and (here == target or target in here.parents):
            raise ConversionError(
                f"--output '{output}' is the current directory or holds it; the conversion replaces --output as a "
                f"whole, so run it from outside (e.g. from '{target.parent}' with --output {target.name})"
            )
        if os.path.ismount(target):
            raise ConversionError(
                f"--output '{output}' is a mount point, which the conversion cannot replace as a whole; write into a "
                f"directory inside it"
            )
        if not os.access(output, os.W_OK | os.X_OK):
            raise ConversionError(f"cannot write into --output '{output}': permission denied")
        existing = existing_entries(output, CHECKPOINT_FILE_PATTERNS)
        if existing and not overwrite:
            raise ConversionError(
                f"--output '{output}' already holds {existing}; pass --overwrite to replace them (nothing was changed)"
            )
    else:
        ancestor = nearest_existing(output.parent)
        if not ancestor.is_dir():
            raise ConversionError(f"cannot create --output '{output}': '{ancestor}' is a file, not a directory")
    return output


def layout_bytes(layout: dict[str, OutputTensor]) -> int:
    """The bytes the tensors of ``layout`` take in safetensors files (headers aside)."""
    return sum(math.prod(spec.shape) * spec.dtype.itemsize for spec in layout.values())


def check_free_space(output: str | Path, needed: int) -> None:
    """``ConversionError`` when the file system of ``--output`` has less free space than ``needed`` bytes (the old
    ``--output`` stays until the new one is complete, so the new one needs all of its own space)."""
    where = nearest_existing(swap_target(output).parent)
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return  # a file system that does not say: the write itself reports a full disk
    if needed > free:
        raise ConversionError(
            f"no space left for --output '{output}': the converted tensors need {needed / 1e9:.2f} GB but '{where}' "
            f"has {free / 1e9:.2f} GB free; free some space or write elsewhere (nothing was changed)"
        )


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
            except Exception as error:  # safetensors reports a full disk as SafetensorError("... (os error 28)")
                cause = as_os_error(error)
                if cause is None:
                    raise
                raise OSError(cause.errno, cause.strerror, str(path)) from None
            self._buffers[filename] = {}
            self._written.append(filename)

    def close(self) -> list[Path]:
        """Write the index when there are several shards; returns the shard paths."""
        unwritten = [name for name in self.split.filename_to_tensors if name not in self._written]
        if unwritten:
            raise RuntimeError(f"shards {unwritten} did not receive all their tensors")
        if self.split.is_sharded:
            index = {"metadata": self.split.metadata, "weight_map": dict(sorted(self.split.tensor_to_filename.items()))}
            (self.directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
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
    "check_free_space",
    "check_output",
    "layout_bytes",
    "parse_shard_size",
]
