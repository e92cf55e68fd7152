"""Key tables and the conversion plan: where every source tensor goes, checked before anything is written.

Owns the rules of a key table (docs/design.md §6):

- :class:`Rename`: one source tensor -> one target (several templates: the first naming a tensor of the target
  model wins, which lets one rule accept layouts that differ by a level);
- :class:`Split`: one source tensor -> several targets, e.g. a fused ``qkv`` cut into ``q`` / ``k`` / ``v``
  (by default along ``dim`` into pieces sized like the targets; or by a function);
- :class:`Merge`: several source tensors -> one target, e.g. ``q`` / ``k`` / ``v`` concatenated into ``qkv``.

:func:`plan_conversion` applies the tables to every source tensor and accounts for each one (converted, unused,
recomputed buffer, saved copy of a tied weight) and for each tensor of the target model (claimed exactly once,
else missing). :func:`check_shapes` then runs every mapping and the job's tensor transform on *meta* tensors of
the source shapes, so a shape mismatch is a :class:`~.errors.ConversionError` naming the source file before a
byte is written, and the output layout (name, shape, dtype, in writing order) is known in advance.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedConfig

from .checkpoints import CheckpointReader
from .errors import ConversionError

# saved buffers that current transformers models recompute instead of loading (old checkpoints hold them)
RECOMPUTED_BUFFERS = (r"rotary_emb\.inv_freq$", r"embeddings\.position_ids$")

Origin = tuple[str, str]  # (source label, source key)
TensorTransform = Callable[[str, torch.Tensor], torch.Tensor]  # (target name, tensor) -> tensor


# ----- rules ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rename:
    """``pattern`` (full match) -> one target; ``targets`` are ``re.Match.expand`` templates, first known wins."""

    pattern: str
    targets: str | Sequence[str]

    def templates(self) -> tuple[str, ...]:
        return (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)


@dataclass(frozen=True)
class Split:
    """One source tensor -> ``targets`` (templates, in order).

    Without ``fn`` the tensor is cut along ``dim`` into pieces as wide as the targets are in the converted model
    (a fused qkv of any width splits correctly); ``fn(tensor) -> sequence of tensors`` replaces that.
    """

    pattern: str
    targets: Sequence[str]
    dim: int = 0
    fn: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None


@dataclass(frozen=True)
class Merge:
    """Several source tensors -> one ``target`` template.

    ``pattern`` holds a named group ``part_group`` (default ``part``) whose value picks the tensor's place in
    ``parts``; the sources whose matches expand ``target`` to the same name are combined in ``parts`` order by
    ``fn(list of tensors) -> tensor``, by default ``torch.cat`` along ``dim``.
    """

    pattern: str
    target: str
    parts: Sequence[str]
    dim: int = 0
    fn: Callable[[list[torch.Tensor]], torch.Tensor] | None = None
    part_group: str = "part"


Rule = Rename | Split | Merge


class KeyTable:
    """Ordered rules; the first whose regex matches the whole source key decides. ``(regex, template(s))``
    tuples are :class:`Rename` rules."""

    def __init__(self, rules: Sequence[Rule | tuple[str, str | Sequence[str]]]):
        self.rules: list[tuple[re.Pattern, Rule]] = []
        for rule in rules:
            rule = rule if isinstance(rule, (Rename, Split, Merge)) else Rename(*rule)
            pattern = re.compile(rule.pattern)
            if isinstance(rule, Merge):
                if rule.part_group not in pattern.groupindex:
                    raise ValueError(f"Merge rule {rule.pattern!r} needs a named group (?P<{rule.part_group}>...)")
                if f"<{rule.part_group}>" in rule.target:
                    raise ValueError(f"Merge rule target {rule.target!r} must not depend on the part group")
            self.rules.append((pattern, rule))

    def match(self, key: str) -> tuple[Rule, re.Match] | None:
        for pattern, rule in self.rules:
            found = pattern.fullmatch(key)
            if found:
                return rule, found
        return None

    def candidates(self, key: str) -> list[str]:
        """Every target name ``key`` could have (all templates of a Rename, all pieces of a Split, a Merge's target)."""
        found = self.match(key)
        if found is None:
            return []
        rule, match = found
        templates = rule.templates() if isinstance(rule, Rename) else rule.targets if isinstance(rule, Split) else (rule.target,)
        return [match.expand(template) for template in templates]

    def target(self, key: str, known: Sequence[str] | dict) -> str | None:
        """A Rename's target of ``key``: the first candidate in ``known``, else the first candidate, else None."""
        candidates = self.candidates(key)
        return next((c for c in candidates if c in known), candidates[0] if candidates else None)


@dataclass
class TensorSource:
    """One directory of tensors and the key table that renames them."""

    reader: CheckpointReader
    key_table: KeyTable

    @property
    def label(self) -> str:
        return self.reader.label


# ----- the target model -----------------------------------------------------------------------------------
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


# ----- the plan -------------------------------------------------------------------------------------------
def _identity(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [tensors[0]]


@dataclass(frozen=True)
class Mapping:
    """Source tensors (in order) -> target tensors (in order), through ``combine``."""

    inputs: tuple[Origin, ...]
    targets: tuple[str, ...]
    combine: Callable[[list[torch.Tensor]], list[torch.Tensor]] = _identity
    rule: Rule | None = None


@dataclass
class ConversionPlan:
    """Where every source tensor goes: a mapping, or one of the accounted-for leftovers."""

    mappings: list[Mapping] = field(default_factory=list)
    unused: list[Origin] = field(default_factory=list)
    recomputed: list[Origin] = field(default_factory=list)  # saved buffers the model recomputes
    tied_duplicates: list[Origin] = field(default_factory=list)  # e.g. a saved copy of a tied lm_head
    tied_copies: dict[Origin, str] = field(default_factory=dict)  # a renamed copy -> the tied key it would fill
    missing: list[str] = field(default_factory=list)

    @property
    def converted(self) -> list[Origin]:
        """The source tensors that become (part of) a target tensor."""
        return [origin for mapping in self.mappings for origin in mapping.inputs]

    @property
    def mapping_of(self) -> dict[Origin, Mapping]:
        return {origin: mapping for mapping in self.mappings for origin in mapping.inputs}


def _split_combine(rule: Split, targets: tuple[str, ...], expected: ExpectedTensors, where: str):
    if rule.fn is not None:
        return lambda tensors: list(rule.fn(tensors[0]))
    sizes = [expected.shapes[target][rule.dim] for target in targets]

    def split(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if tensors[0].shape[rule.dim] != sum(sizes):
            raise ConversionError(
                f"{where} has shape {tuple(tensors[0].shape)}; splitting it along dim {rule.dim} into {list(targets)} "
                f"needs {sum(sizes)} there ({sizes}); does the config match the weights?"
            )
        return list(torch.split(tensors[0], sizes, dim=rule.dim))

    return split


def _merge_combine(rule: Merge, where: str):
    if rule.fn is not None:
        return lambda tensors: [rule.fn(tensors)]

    def concatenate(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        others = {tuple(size for axis, size in enumerate(t.shape) if axis != rule.dim % t.dim()) for t in tensors}
        if len(others) != 1 or len({t.dim() for t in tensors}) != 1:
            shapes = [tuple(t.shape) for t in tensors]
            raise ConversionError(f"{where}: cannot concatenate shapes {shapes} along dim {rule.dim}")
        return [torch.cat(tensors, dim=rule.dim)]

    return concatenate


def _describe(sources: Sequence[TensorSource], origins: Sequence[Origin]) -> str:
    files = {source.label: source.reader for source in sources}
    parts = [f"'{key}' in '{files[label].tensors[key].file}'" for label, key in origins]
    return " + ".join(parts)


def plan_conversion(
    sources: Sequence[TensorSource],
    expected: ExpectedTensors,
    recomputed_buffers: Sequence[str] = RECOMPUTED_BUFFERS,
) -> ConversionPlan:
    """Map every source key through its table; a target claimed twice is a ``ConversionError``."""
    labels = [source.label for source in sources]
    if len(set(labels)) != len(labels):
        raise ValueError(f"tensor sources need distinct labels, got {labels}")
    plan = ConversionPlan()
    claimed: dict[str, Origin] = {}
    merges: dict[tuple[int, str], tuple[Merge, dict[str, Origin]]] = {}

    def claim(targets: tuple[str, ...], origins: tuple[Origin, ...], combine, rule) -> None:
        for target in targets:
            if target in claimed:
                raise ConversionError(
                    f"both {':'.join(claimed[target])} and {':'.join(origins[0])} map to '{target}'; check the key table"
                )
            claimed[target] = origins[0]
        plan.mappings.append(Mapping(origins, targets, combine, rule))

    for source in sources:
        for key in source.reader.keys():
            origin = (source.label, key)
            if any(re.search(pattern, key) for pattern in recomputed_buffers):
                plan.recomputed.append(origin)
                continue
            found = source.key_table.match(key)
            if found is None:
                plan.unused.append(origin)
                continue
            rule, match = found
            where = _describe(sources, [origin])
            if isinstance(rule, Rename):
                target = source.key_table.target(key, expected.shapes)
                if target not in expected.shapes:  # a saved copy of a tied weight counts apart from the unused
                    tied = next((c for c in source.key_table.candidates(key) if c in expected.tied), None)
                    (plan.tied_duplicates if tied else plan.unused).append(origin)
                    if tied:
                        plan.tied_copies[origin] = tied
                    continue
                claim((target,), (origin,), _identity, rule)
            elif isinstance(rule, Split):
                targets = tuple(match.expand(template) for template in rule.targets)
                known = [target in expected.shapes for target in targets]
                if not any(known):
                    plan.unused.append(origin)
                elif not all(known):
                    absent = [t for t, k in zip(targets, known) if not k]
                    raise ConversionError(f"{where} splits into {list(targets)}, but the converted model has no {absent}")
                else:
                    claim(targets, (origin,), _split_combine(rule, targets, expected, where), rule)
            else:
                part = match.group(rule.part_group)
                if part not in rule.parts:
                    plan.unused.append(origin)
                    continue
                _, parts = merges.setdefault((id(rule), match.expand(rule.target)), (rule, {}))
                if part in parts:
                    raise ConversionError(f"{where} and {_describe(sources, [parts[part]])} are both part '{part}'")
                parts[part] = origin

    for (_, target), (rule, parts) in merges.items():
        origins = tuple(parts[name] for name in rule.parts if name in parts)
        if target in expected.shapes and len(origins) == len(rule.parts):
            claim((target,), origins, _merge_combine(rule, _describe(sources, origins)), rule)
        elif target in expected.tied and len(origins) == len(rule.parts):
            plan.tied_duplicates.extend(origins)
        else:  # an incomplete group: its target is reported missing, its parts unused
            plan.unused.extend(origins)
    plan.missing = [name for name in expected.shapes if name not in claimed]
    return plan


def tied_copies_stored_apart(plan: ConversionPlan, readers: dict[str, object], expected: ExpectedTensors):
    """The saved copies of tied weights whose values differ from the weight they are tied to, as
    ``(copy key, tied-to key)``: the checkpoint's weights are not tied (a Flan-T5 head stored apart from its
    embeddings), so skipping the copy would drop a tensor. ``readers``: source label -> ``CheckpointReader``."""
    origin_of = {target: mapping.inputs[0] for mapping in plan.mappings if len(mapping.inputs) == 1
                 and isinstance(mapping.rule, Rename) for target in mapping.targets}  # fmt: skip
    apart = []
    for (label, key), tied_key in plan.tied_copies.items():
        origin = origin_of.get(expected.tied[tied_key])
        if origin is None:
            continue  # tied to a weight this checkpoint does not hold: the copy fills it (tie_weights swaps them)
        copy, weight = readers[label].read(key), readers[origin[0]].read(origin[1])
        if copy.shape != weight.shape or not torch.equal(copy, weight):
            apart.append((key, origin[1]))
    return apart


def disallowed_unused(unused: Sequence[Origin], allow_patterns: Sequence[str]) -> list[Origin]:
    """The unused keys that no ``--allow-unused`` regex matches (``re.search`` on the source key)."""
    compiled = []
    for pattern in allow_patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ConversionError(f"--allow-unused '{pattern}' is not a valid regular expression: {error}") from None
    return [origin for origin in unused if not any(p.search(origin[1]) for p in compiled)]


# ----- shapes, before anything is written -----------------------------------------------------------------
@dataclass(frozen=True)
class OutputTensor:
    shape: tuple[int, ...]
    dtype: torch.dtype


def apply_mapping(
    mapping: Mapping, tensors: list[torch.Tensor], expected: ExpectedTensors, transform: TensorTransform | None,
    where: str,
) -> list[tuple[str, torch.Tensor]]:  # fmt: skip
    """Run one mapping (and the job's transform) and check every output's shape against the converted model."""
    outputs = mapping.combine(tensors)
    if len(outputs) != len(mapping.targets):
        raise ConversionError(f"{where} gave {len(outputs)} tensors for {len(mapping.targets)} targets {list(mapping.targets)}")
    results = []
    for target, tensor in zip(mapping.targets, outputs):
        if transform is not None:
            tensor = transform(target, tensor)
        needed = tuple(expected.shapes[target])
        if tuple(tensor.shape) != needed:
            shapes = " + ".join(str(tuple(t.shape)) for t in tensors)
            unchanged = len(tensors) == 1 and tensors[0].shape == tensor.shape
            gives = "" if unchanged else f", which gives {tuple(tensor.shape)},"
            raise ConversionError(
                f"{where} has shape {shapes}{gives} but '{target}' of the converted model needs {needed}; does the "
                f"config match the weights?"
            )
        results.append((target, tensor))
    return results


def check_shapes(
    plan: ConversionPlan, sources: Sequence[TensorSource], expected: ExpectedTensors,
    transform: TensorTransform | None = None,
) -> dict[str, OutputTensor]:  # fmt: skip
    """Dry-run every mapping on meta tensors; returns the output layout in the order the tensors will be written."""
    readers = {source.label: source.reader for source in sources}
    position = {(source.label, key): (i, j) for i, source in enumerate(sources) for j, key in enumerate(source.reader.keys())}
    layout: dict[str, OutputTensor] = {}
    for mapping in sorted(plan.mappings, key=lambda m: max(position[origin] for origin in m.inputs)):
        infos = [readers[label].tensors[key] for label, key in mapping.inputs]
        meta = [torch.empty(info.shape, dtype=info.dtype, device="meta") for info in infos]
        for target, tensor in apply_mapping(mapping, meta, expected, transform, _describe(sources, mapping.inputs)):
            layout[target] = OutputTensor(tuple(tensor.shape), tensor.dtype)
    return layout


__all__ = [
    "ConversionPlan",
    "ExpectedTensors",
    "KeyTable",
    "Mapping",
    "Merge",
    "OutputTensor",
    "RECOMPUTED_BUFFERS",
    "Rename",
    "Split",
    "TensorSource",
    "apply_mapping",
    "check_shapes",
    "disallowed_unused",
    "expected_tensors",
    "plan_conversion",
    "tied_copies_stored_apart",
]
