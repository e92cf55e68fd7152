"""Machinery every conversion script shares (DESIGN.md §6).

Owns: the arguments all converters take (parsed with transformers' ``HfArgumentParser``); reading a
checkpoint directory, single-file or sharded (``*.index.json``), in safetensors or ``.bin`` form (read with
``torch.load(weights_only=True)``, which never unpickles arbitrary objects), one shard at a time; key tables
of regexes; the plan that accounts for every source tensor (converted / unused / missing) before anything is
written; and a writer that streams converted tensors into sharded safetensors, so a checkpoint is never held
twice in memory. A family's ``convert_<family>.py`` supplies only its key table, config and processor.

The plan is checked against the target model built on the meta device: every parameter and persistent
buffer of the vlmzoo model must come from exactly one source tensor (keys tied to another, like a tied
``lm_head``, excepted), and every converted tensor must have the model's shape.
"""

from __future__ import annotations

import json
import pickle
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer, HfArgumentParser, PreTrainedConfig
from transformers.utils.hub import convert_file_size_to_int

# saved buffers that current transformers models recompute instead of loading (old checkpoints hold them)
RECOMPUTED_BUFFERS = (r"rotary_emb\.inv_freq$", r"embeddings\.position_ids$")
# files that sit next to `.bin` weights but are not weights
NON_WEIGHT_BIN_FILES = re.compile(r"(training_args|optimizer|scheduler|rng_state|trainer_state)[^/]*\.bin$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SHOWN_KEYS = 20  # how many unused / missing keys a failed conversion lists


# ----- arguments ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ConversionArguments:
    """Arguments every converter takes; a family subclasses this and adds ``source`` and its extras."""

    input: str = field(metadata={"help": "directory of the checkpoint to convert"})
    output: str = field(metadata={"help": "directory to write the vlmzoo checkpoint to"})
    allow_unused: list[str] = field(
        default_factory=list,
        metadata={"help": "regexes (re.search) of source keys known to be dead; unused keys they match are allowed"},
    )
    max_shard_size: str = field(default="5GB", metadata={"help": "largest output shard, e.g. 5GB or 500MB"})
    overwrite: bool = field(default=False, metadata={"help": "replace weight files already in --output"})


def parse_arguments(arguments_class: type, argv: Sequence[str] | None, prog: str):
    """Parse ``argv`` (``sys.argv[1:]`` when None) into an instance of the ``arguments_class`` dataclass."""
    parser = HfArgumentParser(arguments_class, prog=prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    (arguments,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return arguments


# ----- reading checkpoints --------------------------------------------------------------------------------
def _load_bin(path: Path) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, memory-mapped where the file format allows; refuses anything but tensors."""
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds more than tensors; torch.load(weights_only=True) refused to unpickle it: {error}"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TypeError(f"{path} must hold a flat dict of name -> tensor, got {type(state).__name__}")
    return state


def _load_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path) if path.suffix == ".safetensors" else _load_bin(path)


def _shard_keys(path: Path) -> list[str]:
    if path.suffix == ".safetensors":
        with safe_open(path, framework="pt") as handle:
            return list(handle.keys())
    return list(_load_bin(path))


class CheckpointReader:
    """The tensors of one checkpoint directory: safetensors preferred over ``.bin``, index over single file."""

    def __init__(self, directory: str | Path, label: str = "checkpoint"):
        self.directory = Path(directory)
        self.label = label
        if not self.directory.is_dir():
            raise ValueError(f"{label} directory '{self.directory}' does not exist")
        self.shards, self._weight_map = self._locate()

    def _locate(self) -> tuple[list[Path], dict[str, str] | None]:
        directory = self.directory
        for suffix in (".safetensors", ".bin"):
            indexes = sorted(directory.glob(f"*{suffix}.index.json"))
            if len(indexes) > 1:
                raise ValueError(f"{directory} holds several {suffix} indexes ({[p.name for p in indexes]}); keep one")
            if indexes:
                weight_map = json.loads(indexes[0].read_text())["weight_map"]
                shards = [directory / name for name in sorted(set(weight_map.values()))]
                absent = [p.name for p in shards if not p.is_file()]
                if absent:
                    raise ValueError(f"{indexes[0]} names shards that are not in {directory}: {absent}")
                return shards, weight_map
            files = sorted(
                p for p in directory.glob(f"*{suffix}") if suffix != ".bin" or NON_WEIGHT_BIN_FILES.search(p.name) is None
            )
            if len(files) > 1:
                raise ValueError(
                    f"{directory} holds several {suffix} files ({[p.name for p in files]}) but no "
                    f"*{suffix}.index.json saying which tensor lives where"
                )
            if files:
                return files, None
        raise ValueError(
            f"no weights found in {self.label} directory '{directory}' (expected *.safetensors or *.bin, "
            f"single or sharded with an *.index.json)"
        )

    def keys(self) -> list[str]:
        """Every tensor name, without loading the tensors (safetensors) or memory-mapping them (``.bin``)."""
        if self._weight_map is not None:
            return list(self._weight_map)
        return [key for shard in self.shards for key in _shard_keys(shard)]

    def iter_shards(self) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        """(shard file name, its tensors), one shard in memory at a time."""
        for shard in self.shards:
            yield shard.name, _load_shard(shard)


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing {path.name} in {path.parent}")
    return json.loads(path.read_text())


def load_tokenizer_if_present(directory: str | Path):
    """The tokenizer saved in ``directory``, or None when it holds no tokenizer files."""
    directory = Path(directory)
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return None
    return AutoTokenizer.from_pretrained(directory)


# ----- key tables and the plan ----------------------------------------------------------------------------
class KeyTable:
    """Ordered ``(regex, target template or templates)`` rules; the first regex that matches the whole key wins.

    A rule may give several templates (``re.Match.expand`` syntax, e.g. ``r"model.vision_tower.\\1"``): the first
    that names a tensor of the target model is used, which lets one rule accept layouts that differ by a level.
    """

    def __init__(self, rules: Sequence[tuple[str, str | Sequence[str]]]):
        self.rules = [
            (re.compile(pattern), (templates,) if isinstance(templates, str) else tuple(templates))
            for pattern, templates in rules
        ]

    def candidates(self, key: str) -> list[str]:
        for pattern, templates in self.rules:
            match = pattern.fullmatch(key)
            if match:
                return [match.expand(template) for template in templates]
        return []

    def target(self, key: str, known: Sequence[str] | dict) -> str | None:
        """The target name of ``key``: the first candidate in ``known``, else the first candidate, else None."""
        candidates = self.candidates(key)
        for candidate in candidates:
            if candidate in known:
                return candidate
        return candidates[0] if candidates else None


@dataclass
class TensorSource:
    """One directory of tensors and the key table that renames them."""

    reader: CheckpointReader
    key_table: KeyTable

    @property
    def label(self) -> str:
        return self.reader.label


@dataclass(frozen=True)
class ExpectedTensors:
    """Shapes of every tensor the target model saves, and the keys tied to another (not saved)."""

    shapes: dict[str, torch.Size]
    tied: dict[str, str]


def expected_tensors(model_class: type, config: PreTrainedConfig) -> ExpectedTensors:
    """Build ``model_class(config)`` on the meta device (no memory) and read its state-dict shapes."""
    with torch.device("meta"):
        model = model_class(config)
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    shapes = {name: tensor.shape for name, tensor in model.state_dict().items() if name not in tied}
    return ExpectedTensors(shapes=shapes, tied=tied)


@dataclass
class ConversionPlan:
    """Where every source tensor goes: a target key, or one of the accounted-for leftovers."""

    targets: dict[tuple[str, str], str] = field(default_factory=dict)  # (source label, key) -> target key
    unused: list[tuple[str, str]] = field(default_factory=list)
    recomputed: list[tuple[str, str]] = field(default_factory=list)  # saved buffers the model recomputes
    tied_duplicates: list[tuple[str, str]] = field(default_factory=list)  # e.g. a saved copy of a tied lm_head
    missing: list[str] = field(default_factory=list)


def plan_conversion(
    sources: Sequence[TensorSource],
    expected: ExpectedTensors,
    recomputed_buffers: Sequence[str] = RECOMPUTED_BUFFERS,
) -> ConversionPlan:
    """Map every source key; a target claimed by two source tensors is a ``ValueError``."""
    labels = [source.label for source in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"tensor sources need distinct labels, got {labels}")
    plan = ConversionPlan()
    claimed: dict[str, tuple[str, str]] = {}
    for source in sources:
        for key in source.reader.keys():
            origin = (source.label, key)
            if any(re.search(pattern, key) for pattern in recomputed_buffers):
                plan.recomputed.append(origin)
                continue
            target = source.key_table.target(key, expected.shapes)
            if target in expected.shapes:
                if target in claimed:
                    raise ValueError(f"both {':'.join(claimed[target])} and {':'.join(origin)} map to '{target}'")
                claimed[target] = origin
                plan.targets[origin] = target
            elif target in expected.tied:
                plan.tied_duplicates.append(origin)
            else:
                plan.unused.append(origin)
    plan.missing = [name for name in expected.shapes if name not in claimed]
    return plan


def disallowed_unused(unused: Sequence[tuple[str, str]], allow_patterns: Sequence[str]) -> list[tuple[str, str]]:
    """The unused keys that no ``--allow-unused`` regex matches (``re.search`` on the source key)."""
    compiled = []
    for pattern in allow_patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(f"--allow-unused '{pattern}' is not a valid regular expression: {error}") from None
    return [origin for origin in unused if not any(p.search(origin[1]) for p in compiled)]


def summary_line(converted: int, unused: int, missing: int) -> str:
    return f"converted {converted} tensors, {unused} unused, {missing} missing"


# ----- tensor helpers -------------------------------------------------------------------------------------
def grow_rows_with_mean(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """(V, H) -> (rows, H): new rows are the mean of the existing ones (the usual init for added tokens)."""
    if tensor.shape[0] >= rows:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], *tensor.shape[1:])], dim=0)


# ----- writing --------------------------------------------------------------------------------------------
WEIGHT_OUTPUT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")


def prepare_output_dir(output: str | Path, inputs: Sequence[str | Path], overwrite: bool) -> Path:
    """Create ``output``; refuse an input directory or one that already holds weights (unless ``overwrite``)."""
    output = Path(output)
    if any(output.resolve() == Path(directory).resolve() for directory in inputs):
        raise ValueError(f"--output '{output}' is an input directory; write the conversion elsewhere")
    output.mkdir(parents=True, exist_ok=True)
    existing = sorted({p for pattern in WEIGHT_OUTPUT_PATTERNS for p in output.glob(pattern)})
    if existing and not overwrite:
        raise ValueError(
            f"--output '{output}' already holds weights ({[p.name for p in existing]}); pass --overwrite to replace them"
        )
    for path in existing:
        path.unlink()
    return output


class SafetensorsShardWriter:
    """Streams tensors into ``model-0000i-of-0000n.safetensors`` shards (+ index), or one ``model.safetensors``."""

    def __init__(self, directory: Path, max_shard_bytes: int):
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._pointers: set[int] = set()
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + size > self.max_shard_bytes:
            self._flush()
        tensor = tensor.detach().contiguous()
        # safetensors refuses tensors sharing memory (tied weights in `.bin` files, views of a larger storage)
        if tensor.untyped_storage().nbytes() != size or tensor.data_ptr() in self._pointers:
            tensor = tensor.clone()
        self._pointers.add(tensor.data_ptr())
        self._buffer[name] = tensor
        self._buffer_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f"model-{len(self._written) + 1:05d}.safetensors.partial"
        save_file(self._buffer, path, metadata={"format": "pt"})
        self._written.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes, self._pointers = {}, 0, set()

    def close(self) -> list[Path]:
        """Write the last shard, give the shards their final names and write the index when there are several."""
        if self._buffer or not self._written:
            self._flush()
        count = len(self._written)
        if count == 1:
            final = self.directory / "model.safetensors"
            self._written[0][0].rename(final)
            return [final]
        weight_map, finals = {}, []
        for number, (path, names) in enumerate(self._written, start=1):
            final = self.directory / f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            finals.append(final)
            weight_map.update({name: final.name for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return finals

    def abort(self) -> None:
        """Delete what was written so far (a failed conversion leaves no loadable half checkpoint)."""
        for path, _ in self._written:
            path.unlink(missing_ok=True)
        self._written, self._buffer = [], {}


def write_tensors(
    plan: ConversionPlan,
    sources: Sequence[TensorSource],
    expected: ExpectedTensors,
    writer: SafetensorsShardWriter,
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Read each source shard by shard, rename, transform, check the shape, write. Returns tensors written."""
    written = 0
    with tqdm(total=len(plan.targets), desc="converting", unit="tensor") as bar:
        for source in sources:
            for _, tensors in source.reader.iter_shards():
                for key in list(tensors):
                    tensor = tensors.pop(key)  # drop the shard's reference as we go
                    target = plan.targets.get((source.label, key))
                    if target is None:
                        continue
                    if transform is not None:
                        tensor = transform(target, tensor)
                    if tuple(tensor.shape) != tuple(expected.shapes[target]):
                        raise ValueError(
                            f"{source.label}:{key} has shape {tuple(tensor.shape)} but '{target}' of the converted "
                            f"model needs {tuple(expected.shapes[target])}; does the config match the weights?"
                        )
                    writer.add(target, tensor)
                    written += 1
                    bar.update()
                del tensors
    return written


# ----- the whole run --------------------------------------------------------------------------------------
@dataclass
class ConversionJob:
    """What a family converter hands to :func:`run_conversion`."""

    sources: list[TensorSource]
    model_class: type
    config: PreTrainedConfig
    tensor_transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None
    notes: list[str] = field(default_factory=list)
    save_extras: Callable[[Path], None] | None = None  # processor, generation config, ...


def _show(title: str, keys: Sequence) -> None:
    if not keys:
        return
    print(f"{title}:")
    for key in keys[:SHOWN_KEYS]:
        print(f"  {':'.join(key) if isinstance(key, tuple) else key}")
    if len(keys) > SHOWN_KEYS:
        print(f"  ... and {len(keys) - SHOWN_KEYS} more")


def run_conversion(job: ConversionJob, arguments: ConversionArguments) -> int:
    """Plan, check the accounting, then stream the tensors; prints the summary line and returns an exit code."""
    expected = expected_tensors(job.model_class, job.config)
    plan = plan_conversion(job.sources, expected)
    rejected = disallowed_unused(plan.unused, arguments.allow_unused)
    notes = list(job.notes)
    if plan.recomputed:
        notes.append(f"skipped {len(plan.recomputed)} saved buffers the model recomputes (e.g. {plan.recomputed[0][1]})")
    if plan.tied_duplicates:
        notes.append(f"skipped {len(plan.tied_duplicates)} saved copies of tied weights ({plan.tied_duplicates[0][1]})")
    if plan.unused and not rejected:
        notes.append(f"all {len(plan.unused)} unused tensors are allowed by --allow-unused")

    if rejected or plan.missing:
        print(summary_line(len(plan.targets), len(plan.unused), len(plan.missing)))
        for note in notes:
            print(f"note: {note}")
        _show("unused source tensors (no --allow-unused regex matches them)", rejected)
        _show("missing tensors of the converted model", plan.missing)
        if rejected:
            print("tensors known to be dead (e.g. a classifier head) can be allowed with --allow-unused REGEX")
        print(f"conversion failed; nothing was written to {arguments.output}")
        return 1

    inputs = [source.reader.directory for source in job.sources]
    output = prepare_output_dir(arguments.output, inputs, arguments.overwrite)
    writer = SafetensorsShardWriter(output, convert_file_size_to_int(arguments.max_shard_size))
    try:
        written = write_tensors(plan, job.sources, expected, writer, job.tensor_transform)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    job.config.architectures = [job.model_class.__name__]
    job.config.save_pretrained(output)
    if job.save_extras is not None:
        job.save_extras(output)
    print(summary_line(written, len(plan.unused), len(plan.missing)))
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {output}")
    return 0


__all__ = [
    "ConversionArguments",
    "ConversionJob",
    "ConversionPlan",
    "CheckpointReader",
    "ExpectedTensors",
    "KeyTable",
    "SafetensorsShardWriter",
    "TensorSource",
    "disallowed_unused",
    "expected_tensors",
    "grow_rows_with_mean",
    "load_tokenizer_if_present",
    "parse_arguments",
    "plan_conversion",
    "prepare_output_dir",
    "read_json",
    "run_conversion",
    "summary_line",
    "write_tensors",
]
