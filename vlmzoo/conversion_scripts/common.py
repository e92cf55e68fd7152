"""Machinery every conversion script shares (docs/design.md §6): arguments, the source registry, the run.

Owns:

- :class:`ConversionArguments`: the flags every converter takes (parsed with transformers' ``HfArgumentParser``),
  including ``--source`` (its choices are the family's registered sources) and the repeatable
  ``--encoder NAME=DIR`` (a bare ``--encoder DIR`` names the source's default encoder);
- :class:`Converter`: a family's source registry (``@CONVERTER.source("hf", ...)`` registers a function that
  turns the arguments into a :class:`ConversionJob`) and its entry point :meth:`Converter.main`, which prints a
  user error (:class:`~.errors.ConversionError`, argument errors) as one line and returns 2, and lets any other
  exception (a bug) propagate with its traceback;
- :func:`run_conversion`: finish (or roll back) what a killed run left half-done, check the arguments and
  ``--output``, plan and account for every tensor, check every shape on meta tensors and the free space, then
  stream the tensors into a staging directory beside ``--output`` and put it in place of ``--output`` as a whole
  only once the conversion is complete and verified (see ``swap.py``). An I/O failure on the way (a full disk,
  however the library reports it) is a one-line user error naming ``--output``, which stays unchanged.

Reading inputs lives in ``checkpoints.py``, key tables and the plan in ``key_tables.py``, writing in
``writing.py`` and ``swap.py``; their public names are re-exported here, so a family's ``convert_<family>.py`` imports from
this module only and holds just its key table, config translation and processor. What the LLaVA-fork
checkpoints share (``mm_*`` config fields, the -200 image index, the chat template) is in ``llava_fork.py``.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PreTrainedConfig

from ..registry import Registry
from .checkpoints import (
    CheckpointReader,
    TensorInfo,
    check_readable,
    load_config,
    load_encoder_config,
    load_tokenizer_if_present,
    read_json,
    read_text,
)
from .errors import ConversionError, as_os_error, os_error, report_user_error
from .key_tables import (
    RECOMPUTED_BUFFERS,
    ConversionPlan,
    ExpectedTensors,
    KeyTable,
    Mapping,
    Merge,
    Rename,
    Split,
    TensorSource,
    TensorTransform,
    apply_mapping,
    check_shapes,
    disallowed_unused,
    expected_tensors,
    plan_conversion,
    tied_copies_stored_apart,
)
from .swap import recover_interrupted_runs
from .writing import (
    ShardedSafetensorsWriter,
    StagingDirectory,
    check_free_space,
    check_output,
    layout_bytes,
    parse_shard_size,
)

SHOWN_KEYS = 20  # how many unused / missing keys a failed conversion lists
DEFAULT_ENCODER_HELP = "a bare --encoder DIR names the source's first encoder"
_NAMED_ENCODER = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_.-]*)=(?P<directory>.+)")


# ----- arguments ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ConversionArguments:
    """Arguments every converter takes; a family may subclass this to add its own flags."""

    source: str = field(metadata={"help": "layout of the --input checkpoint"})
    input: str = field(metadata={"help": "directory of the checkpoint to convert"})
    output: str = field(
        metadata={"help": "directory to write the vlmzoo checkpoint to; the conversion is staged in a hidden "
                  "directory beside it and moved into place only when complete, so a failed run changes nothing"}
    )
    encoder: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=DIR, repeatable: a saved transformers model for an encoder the checkpoint's config "
                  f"only names (a Hub id or a local path); {DEFAULT_ENCODER_HELP}", "action": "extend"},
    )
    allow_unused: list[str] = field(
        default_factory=list,
        metadata={"help": "regexes (re.search) of source keys known to be dead; unused keys they match are allowed",
                  "action": "extend"},
    )
    max_shard_size: str = field(default="5GB", metadata={"help": "largest output shard, e.g. 5GB or 500MB"})
    overwrite: bool = field(
        default=False,
        metadata={"help": "replace files already in --output (config, weights, processor files); without it an "
                  "--output holding any file the conversion writes is refused"},
    )
    encoders: dict[str, Path] = field(init=False, default_factory=dict)  # --encoder resolved by the Converter


@dataclass(frozen=True)
class SourceSpec:
    """One checkpoint layout a family converts: how to prepare its job and which ``--encoder`` names it takes."""

    name: str
    prepare: Callable[[ConversionArguments], "ConversionJob"]
    help: str
    encoders: tuple[str, ...] = ()  # the first is the default of a bare --encoder DIR


def resolve_encoders(values: Sequence[str], spec: SourceSpec) -> dict[str, Path]:
    """``--encoder`` values -> {name: directory}, checked against the names ``spec`` takes."""
    encoders: dict[str, Path] = {}
    names = list(spec.encoders)
    for value in values:
        if not names:
            raise ConversionError(f"--encoder is not used with --source {spec.name} (got '{value}')")
        named = _NAMED_ENCODER.fullmatch(value)
        name, directory = (named["name"], named["directory"]) if named else (None, value)
        if name is None:
            if len(names) > 1:
                raise ConversionError(f"--encoder '{value}' needs a name (NAME=DIR): --source {spec.name} takes {names}")
            name = names[0]
        if name not in names:
            raise ConversionError(f"--encoder '{value}': unknown encoder name '{name}'; --source {spec.name} takes {names}")
        if name in encoders:
            raise ConversionError(f"--encoder {name} is given twice ('{encoders[name]}' and '{directory}')")
        if not directory.strip():  # Path("") is the current directory
            raise ConversionError(f"--encoder '{value}' names no directory; pass --encoder {name}=DIR")
        path = Path(directory)
        if not path.exists():
            raise ConversionError(f"--encoder {name}: directory '{path}' does not exist")
        if not path.is_dir():
            raise ConversionError(f"--encoder {name}: '{path}' is a file, not a saved model directory")
        encoders[name] = path
    return encoders


def check_input_directory(directory: str | Path) -> Path:
    """``--input`` must be an existing, listable directory."""
    if not str(directory).strip():  # Path("") is the current directory
        raise ConversionError("--input is empty; name the directory of the checkpoint to convert")
    path = Path(directory)
    if not path.exists():
        raise ConversionError(f"input directory '{path}' does not exist")
    if not path.is_dir():
        raise ConversionError(f"--input '{path}' is a file, not a checkpoint directory")
    try:
        next(path.iterdir(), None)
    except OSError as error:
        raise os_error("list the input directory", path, error) from None
    return path


# ----- jobs -----------------------------------------------------------------------------------------------
@dataclass
class ConversionJob:
    """What a family's source hands to :func:`run_conversion`."""

    sources: list[TensorSource]
    model_class: type
    config: PreTrainedConfig
    tensor_transform: TensorTransform | None = None  # applied to every target tensor (e.g. growing a vocabulary)
    notes: list[str] = field(default_factory=list)
    save_extras: Callable[[Path], None] | None = None  # processor, generation config, ...


class Converter:
    """A family's converter: its registered sources and its command-line entry point."""

    def __init__(self, family: str, description: str = "", arguments_class: type = ConversionArguments):
        self.family = family
        self.prog = f"vlmzoo convert {family}"
        self.description = description
        self.arguments_class = arguments_class
        self.sources: Registry[SourceSpec] = Registry(f"{family} checkpoint source")

    def source(self, name: str, help: str, encoders: Sequence[str] = ()):
        """Decorator registering ``prepare(arguments) -> ConversionJob`` as the ``--source name`` layout."""

        def decorator(prepare):
            self.sources.register(name)(SourceSpec(name, prepare, help, tuple(encoders)))
            return prepare

        return decorator

    def parser(self) -> HfArgumentParser:
        parser = HfArgumentParser(self.arguments_class, prog=self.prog, description=self.description)
        specs = [self.sources.get(name) for name in self.sources.keys()]
        for action in parser._actions:
            if action.dest == "source":
                action.choices = self.sources.keys()
                action.help = "; ".join(f"{spec.name}: {spec.help}" for spec in specs)
            elif action.dest == "encoder":
                taking = [f"--source {spec.name}: {', '.join(spec.encoders)}" for spec in specs if spec.encoders]
                action.help = f"{action.help}. Encoder names: {'; '.join(taking) or 'none'}"

        from ..cli import raise_parser_errors

        raise_parser_errors(parser, self.prog, ConversionError)  # argparse errors are user errors: one line, exit 2
        return parser

    def parse(self, argv: Sequence[str] | None = None) -> ConversionArguments:
        namespace = self.parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        values = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(self.arguments_class) if f.init}
        return self.arguments_class(**values)

    def prepare(self, arguments: ConversionArguments) -> ConversionJob:
        spec = self.sources.get(arguments.source)
        check_input_directory(arguments.input)
        arguments.encoders = resolve_encoders(arguments.encoder, spec)
        return spec.prepare(arguments)

    def convert(self, arguments: ConversionArguments) -> int:
        """Run the conversion the arguments describe; raises ``ConversionError`` for user errors."""
        return run_conversion(self.prepare(arguments), arguments)

    def run(self, argv: Sequence[str] | None = None) -> int:
        """Parse ``argv`` and convert; raises ``ConversionError`` for user errors (for use from Python)."""
        return self.convert(self.parse(argv))

    def main(self, argv: Sequence[str] | None = None) -> int:
        """Entry point: exit code 0 (converted), 1 (tensors unaccounted for), 2 (user error, one line on stderr)."""
        try:
            return self.run(argv)
        except ConversionError as error:
            return report_user_error(self.prog, error)


# ----- tensor helpers -------------------------------------------------------------------------------------
def grow_rows_with_mean(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """(V, H) -> (rows, H): new rows are the mean of the existing ones (the usual init for added tokens)."""
    if tensor.shape[0] >= rows:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], *tensor.shape[1:])], dim=0)


# ----- the run --------------------------------------------------------------------------------------------
def summary_line(converted: int, unused: int, missing: int) -> str:
    return f"converted {converted} tensors, {unused} unused, {missing} missing"


def _show(title: str, keys: Sequence) -> None:
    if not keys:
        return
    print(f"{title}:")
    for key in keys[:SHOWN_KEYS]:
        print(f"  {':'.join(key) if isinstance(key, tuple) else key}")
    if len(keys) > SHOWN_KEYS:
        print(f"  ... and {len(keys) - SHOWN_KEYS} more")


def write_tensors(
    plan: ConversionPlan,
    sources: Sequence[TensorSource],
    expected: ExpectedTensors,
    writer: ShardedSafetensorsWriter,
    transform: TensorTransform | None = None,
) -> int:
    """Stream every source tensor through its mapping into ``writer``; returns the source tensors converted."""
    mapping_of = plan.mapping_of
    files = {source.label: source.reader for source in sources}
    pending: dict[int, dict[tuple[str, str], torch.Tensor]] = {}
    converted = 0
    with tqdm(total=len(mapping_of), desc="converting", unit="tensor", disable=None) as bar:  # off unless a TTY
        for source in sources:
            for key, tensor in source.reader.iter_tensors():
                origin = (source.label, key)
                mapping = mapping_of.get(origin)
                if mapping is None:
                    continue
                parts = pending.setdefault(id(mapping), {})
                parts[origin] = tensor
                converted += 1
                bar.update()
                if len(parts) < len(mapping.inputs):
                    continue  # a merge waits for its other parts
                del pending[id(mapping)]
                where = f"'{key}' in '{files[source.label].tensors[key].file}'"
                for target, output in apply_mapping(mapping, [parts[o] for o in mapping.inputs], expected, transform, where):
                    writer.add(target, output)
    if pending:
        raise RuntimeError(f"{len(pending)} merges did not receive all their parts")
    return converted


def run_conversion(job: ConversionJob, arguments: ConversionArguments) -> int:
    """Check, plan, account, check shapes, then write into a staging directory and move it into place.

    Prints the summary line; returns 0, or 1 when tensors are unaccounted for (nothing is written then).
    Every refusal happens before anything is written and raises ``ConversionError``.
    """
    max_shard_size = parse_shard_size(arguments.max_shard_size)
    inputs = [source.reader.directory for source in job.sources]
    if str(arguments.output).strip():  # a killed run's half-done swap is finished (or rolled back) first
        for note in recover_interrupted_runs(arguments.output):
            print(f"note: {note}")
    output = check_output(arguments.output, inputs, arguments.overwrite)
    expected = expected_tensors(job.model_class, job.config)
    plan = plan_conversion(job.sources, expected)
    notes = list(job.notes)
    apart = tied_copies_stored_apart(plan, {source.label: source.reader for source in job.sources}, expected)
    if apart:
        # the checkpoint's head is not the embedding (Flan-T5 v1.1): untie, so the head is converted, not dropped
        job.config.tie_word_embeddings = False
        expected = expected_tensors(job.model_class, job.config)
        plan = plan_conversion(job.sources, expected)
        notes.append(f"'{apart[0][0]}' is stored apart from '{apart[0][1]}' with other values: converted untied "
                     f"(tie_word_embeddings=False)")  # fmt: skip
    rejected = disallowed_unused(plan.unused, arguments.allow_unused)
    if plan.recomputed:
        notes.append(f"skipped {len(plan.recomputed)} saved buffers the model recomputes (e.g. {plan.recomputed[0][1]})")
    if plan.tied_duplicates:
        notes.append(f"skipped {len(plan.tied_duplicates)} saved copies of tied weights ({plan.tied_duplicates[0][1]})")
    if plan.unused and not rejected:
        notes.append(f"all {len(plan.unused)} unused tensors are allowed by --allow-unused")

    converted = len(plan.converted)
    if rejected or plan.missing:
        print(summary_line(converted, len(plan.unused), len(plan.missing)))
        for note in notes:
            print(f"note: {note}")
        _show("unused source tensors (no --allow-unused regex matches them)", rejected)
        _show("missing tensors of the converted model", plan.missing)
        if rejected:
            print("tensors known to be dead (e.g. a classifier head) can be allowed with --allow-unused REGEX")
        print(f"conversion failed; nothing was written to {arguments.output}")
        return 1
    layout = check_shapes(plan, job.sources, expected, job.tensor_transform)
    check_free_space(output, layout_bytes(layout))

    with StagingDirectory(output, arguments.overwrite) as staging:
        try:
            written = _stage(job, plan, expected, layout, staging, max_shard_size)
        except Exception as error:  # a full disk or another I/O failure, however the library reports it
            cause = as_os_error(error)
            if cause is None or isinstance(error, ConversionError):
                raise
            if cause.filename and not Path(cause.filename).absolute().is_relative_to(staging.path):
                raise os_error("read", cause.filename, cause) from None  # an input, not the output
            raise staging.write_error(cause) from None
        if written != converted:
            raise RuntimeError(f"planned {converted} source tensors but wrote {written}")
        replaced = staging.commit()
    print(summary_line(written, len(plan.unused), len(plan.missing)))
    for note in notes:
        print(f"note: {note}")
    if replaced:
        print(f"note: --overwrite replaced {replaced}")
    print(f"wrote {output}")
    return 0


def _stage(job: ConversionJob, plan, expected, layout, staging: StagingDirectory, max_shard_size: int) -> int:
    """Write the whole conversion into the staging directory and verify it; returns the source tensors written."""
    writer = ShardedSafetensorsWriter(staging.path, layout, max_shard_size)  # plans the shards only
    job.config.architectures = [job.model_class.__name__]
    # the small files first: every file name is then known before the weights are streamed
    job.config.save_pretrained(staging.path)
    if job.save_extras is not None:
        job.save_extras(staging.path)
    staging.replaced_files([path.name for path in staging.path.iterdir()] + writer.file_names)
    written = write_tensors(plan, job.sources, expected, writer, job.tensor_transform)
    writer.close()
    writer.verify()
    read_json(staging.path / "config.json")
    return written


# ----- what a transformers checkpoint directory saved beside its weights -----------------------------------
def saved_image_processor_settings(directory: Path, fields: Sequence[str]) -> dict:
    """The image-processor ``fields`` saved in ``directory`` (5.x: inside processor_config.json; 4.x:
    preprocessor_config.json), those that are set."""
    saved = {}
    if (directory / "preprocessor_config.json").is_file():
        saved = read_json(directory / "preprocessor_config.json")
    if (directory / "processor_config.json").is_file():
        saved = read_json(directory / "processor_config.json").get("image_processor", saved)
    return {key: saved[key] for key in fields if saved.get(key) is not None}


def saved_chat_template(directory: Path, tokenizer=None) -> str | None:
    """The chat template saved in ``directory`` (``chat_template.jinja`` or ``.json``), else the tokenizer's."""
    if (directory / "chat_template.jinja").is_file():
        return read_text(directory / "chat_template.jinja")
    if (directory / "chat_template.json").is_file():
        return read_json(directory / "chat_template.json").get("chat_template")
    return getattr(tokenizer, "chat_template", None)


def extras_saver(processor, input_dir: Path) -> Callable[[Path], None]:
    """Saves the processor and the input's generation config (read now, so a bad file fails before writing)."""
    from transformers import GenerationConfig

    generation_config = None
    if (input_dir / "generation_config.json").is_file():
        read_json(input_dir / "generation_config.json")
        generation_config = GenerationConfig.from_pretrained(input_dir)

    def save_extras(output: Path) -> None:
        if processor is not None:
            processor.save_pretrained(output)
        if generation_config is not None:
            generation_config.save_pretrained(output)

    return save_extras


__all__ = [
    "CheckpointReader",
    "ConversionArguments",
    "ConversionError",
    "ConversionJob",
    "ConversionPlan",
    "Converter",
    "ExpectedTensors",
    "KeyTable",
    "Mapping",
    "Merge",
    "RECOMPUTED_BUFFERS",
    "Rename",
    "SourceSpec",
    "Split",
    "TensorInfo",
    "TensorSource",
    "check_readable",
    "check_shapes",
    "disallowed_unused",
    "expected_tensors",
    "extras_saver",
    "grow_rows_with_mean",
    "load_config",
    "load_encoder_config",
    "load_tokenizer_if_present",
    "plan_conversion",
    "read_json",
    "read_text",
    "resolve_encoders",
    "run_conversion",
    "saved_chat_template",
    "saved_image_processor_settings",
    "summary_line",
    "write_tensors",
]
