# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Checks of what a user passes to a vlmzoo config (docs/design.md §7): keys, field types, sub-configs, sizes.

``ZooVLMConfig`` calls these; each turns a silently wrong config into a warning or a ``TypeError`` /
``ValueError`` that names the field and the fix:

- **Unknown keys.** transformers stores any keyword a config does not declare as a plain attribute, which no
  model reads: a typo (``projektor_type``) leaves the default in force. A key is *unknown* when it is none of:
  a field of the config class, an ``attribute_map`` alias, a property of the class, a key transformers'
  ``PreTrainedConfig`` itself reads or writes (:func:`standard_config_keys`: generation parameters, legacy
  common attributes, runtime attributes such as ``quantization_config``), or a private (``_``-prefixed) key.
  Each unknown key is logged at warning level (visible at transformers' default verbosity) with the closest
  valid key (``difflib``). In a sub-config dict, a key that is not a field of its class is reported only when it
  is a likely typo of one (close match), since transformers' configs read many legacy keys of their own.
- **Field types.** ``@strict`` (huggingface_hub) checks a field's type on assignment, but it skips annotations
  that are strings, and ``from __future__ import annotations`` makes every annotation of a vlmzoo config module
  a string, so ``tie_word_embeddings="false"`` went through (and tied the head: a non-empty string is true).
  :func:`check_field_type` checks the fields vlmzoo declares against their resolved annotations, with a
  ``TypeError`` that says what to pass (transformers' own fields keep ``@strict``'s checks).
- **Sub-configs.** A dict for a sub-config whose class is resolved by ``model_type`` (``AutoConfig`` specs:
  ``text_config``, most ``vision_config``, ``aux_vision_config``, experts) must name its ``model_type``: without one
  transformers builds the family's default architecture from fields meant for another. A dict for a sub-config of
  a fixed class (BLIP-2's ``qformer_config``) may leave it out, and must not name another. ``@strict`` errors
  raised inside a sub-config become ``TypeError`` / ``ValueError`` naming the sub-config.
- **Sizes.** Zero or negative widths, depths, head counts and vocabularies (:data:`SIZE_FIELDS`) reach torch as
  empty or negative tensors or divisions by zero; they are refused at config time.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

from huggingface_hub.dataclasses import type_validator
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassError
from transformers import GenerationConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import logging

logger = logging.get_logger(__name__)

# keys that transformers' PreTrainedConfig reads from the keyword arguments itself (its __post_init__), writes
# into configs at run time (quantisation, tensor parallelism, custom code, pipelines), or that every transformers
# 4.x config carried as a common attribute (configs saved then still hold them); none is a user's typo
PRE_TRAINED_CONFIG_KEYS = frozenset(
    {
        # read by PreTrainedConfig.__post_init__ / written by to_dict
        "model_type", "name_or_path", "torch_dtype", "num_labels", "output_attentions", "attn_implementation",
        "experts_implementation", "per_layer_config", "rope_scaling", "rope_theta",
        # written at run time by transformers
        "quantization_config", "distributed_config", "auto_map", "custom_pipelines",
        # common attributes of transformers 4.x configs
        "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "is_decoder", "cross_attention_hidden_size",
        "add_cross_attention", "tie_encoder_decoder", "finetuning_task", "tokenizer_class", "prefix", "bos_token_id",
        "pad_token_id", "eos_token_id", "sep_token_id", "decoder_start_token_id", "task_specific_params",
        "gradient_checkpointing", "use_return_dict",
    }
)  # fmt: skip


def _is_property(klass: type, name: str) -> bool:
    return isinstance(inspect.getattr_static(klass, name, None), property)


@functools.cache
def standard_config_keys() -> frozenset[str]:
    """:data:`PRE_TRAINED_CONFIG_KEYS`, the generation parameters transformers pops from a config's keywords
    (``use_cache``, ``max_length``, ...) and the fields and properties of ``PreTrainedConfig``."""
    generation = GenerationConfig._get_default_generation_params().keys()
    properties = {name for name in dir(PreTrainedConfig) if _is_property(PreTrainedConfig, name)}
    fields = PreTrainedConfig.__dataclass_fields__.keys()
    return frozenset({*PRE_TRAINED_CONFIG_KEYS, *generation, *properties, *fields})


@functools.cache
def _saved_keys(config_class: type) -> frozenset[str]:
    """The keys a default ``config_class`` writes into its ``to_dict()`` (attributes set while it is built, e.g. a
    backbone's ``stage_names``), which it reads back."""
    try:
        return frozenset(config_class().to_dict())
    except Exception:  # a config that cannot be built without arguments: its declared keys only
        return frozenset()


def _known_keys(config_class: type) -> set[str]:
    """The keys ``config_class`` takes: its fields, ``attribute_map`` aliases, properties and what it saves."""
    properties = {name for name in dir(config_class) if _is_property(config_class, name)}
    return {*config_class.__dataclass_fields__, *config_class.attribute_map, *properties, *_saved_keys(config_class)}


def closest_key(key: str, candidates, cutoff: float = 0.6) -> str | None:
    """The candidate closest to ``key`` (``difflib``), or ``None`` when none is close."""
    matches = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def unknown_keys(config_class: type, keys) -> list[str]:
    """The keys (in order) that ``config_class`` does not know (see the module docstring)."""
    known = _known_keys(config_class) | standard_config_keys()
    return [key for key in keys if isinstance(key, str) and not key.startswith("_") and key not in known]


def warn_unknown_keys(config: PreTrainedConfig, given: Mapping[str, Any], root: type) -> None:
    """Log one warning per key of ``given`` (a config's extra keywords) that the config does not know, with the
    closest of the fields that ``root`` (the vlmzoo base class) and its subclasses declare."""
    config_class = type(config)
    own = [*declared_field_types(config_class, root), *config_class.attribute_map]
    inherited = [name for name in config_class.__dataclass_fields__ if not name.startswith("_") and name not in own]
    for key in unknown_keys(config_class, given):
        # the family's own fields first; transformers' common fields only when very close
        suggestion = closest_key(key, own) or closest_key(key, inherited, cutoff=0.8)
        if suggestion is not None:
            current = config.__dict__.get(config_class.attribute_map.get(suggestion, suggestion))
            fix = f"did you mean '{suggestion}' (now {current!r:.60})?"
        else:
            fix = f"its keys are the fields documented in help({config_class.__name__})"
        logger.warning(
            f"{config_class.__name__} got an unknown key '{key}' (= {given[key]!r:.60}), which no model reads: it is "
            f"not a field of {config_class.__name__} and has no effect; {fix}"
        )


def warn_likely_typos(where: str, config_class: type, given: Mapping[str, Any]) -> None:
    """Log a warning for each key of the sub-config dict ``given`` that is unknown to ``config_class`` and close
    to one of its fields (transformers' configs read legacy keys of their own, so only likely typos are reported)."""
    fields = [name for name in config_class.__dataclass_fields__ if not name.startswith("_")]
    for key in unknown_keys(config_class, given):
        suggestion = closest_key(key, fields, cutoff=0.8)
        if suggestion is not None:
            logger.warning(
                f"{where} got an unknown key '{key}' (= {given[key]!r:.60}), which {config_class.__name__} does not "
                f"read, so its default {suggestion}={getattr(config_class, suggestion, None)!r:.40} stays; did you "
                f"mean '{suggestion}'?"
            )


# ----- field types ---------------------------------------------------------------------------------------------------
@functools.cache
def declared_field_types(config_class: type, root: type) -> dict[str, Any]:
    """Field name -> resolved annotation, for the fields declared by ``root`` and its subclasses in the MRO of
    ``config_class`` (vlmzoo's own fields; transformers' are checked by ``@strict``)."""
    declared: dict[str, Any] = {}
    for klass in reversed(config_class.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, root)):
            continue
        namespace = vars(sys.modules[klass.__module__])
        for name, annotation in klass.__dict__.get("__annotations__", {}).items():
            if name in klass.__dataclass_fields__:  # ClassVars are not fields
                declared[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
    return declared


def _describe(annotation: Any) -> str:
    """``int``, ``bool | None``, ``dict[str, list[str]] | None``: an annotation as it is written."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_describe(arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def check_field_type(config_name: str, name: str, value: Any, annotation: Any) -> None:
    """``TypeError`` naming the field, what it takes and what to pass when ``value`` does not match ``annotation``
    (``bool`` is not an ``int``; nested ``dict`` / ``list`` element types are checked too)."""
    try:
        type_validator(name, value, annotation)
    except TypeError:
        pass
    else:
        return
    accepted = typing.get_args(annotation) or (annotation,)
    if bool in accepted:
        fix = "pass True or False (JSON true / false), not a string or a number"
    elif int in accepted:
        also = " (or a list of them)" if list[int] in accepted else ""
        fix = f"pass a whole number{also}, not a string, a float or a bool"
    elif any(isinstance(kind, type) and issubclass(kind, PreTrainedConfig) for kind in accepted):
        fix = "pass the sub-config's PreTrainedConfig, or a dict of its fields (with its model_type)"
    else:
        fix = f"see help({config_name}) for what it holds"
    raise TypeError(
        f"{config_name}.{name} must be {_describe(annotation)}, got {value!r:.80} ({type(value).__name__}); {fix}"
    )


# ----- sub-configs -----------------------------------------------------------------------------------------------
def _fixed_class(spec: SubConfigSpec) -> type | None:
    """The config class a spec always builds, or ``None`` when it resolves the class from a ``model_type``."""
    config_class = spec.config_class
    return config_class if isinstance(config_class, type) and issubclass(config_class, PreTrainedConfig) else None


def sub_config_from_dict(
    where: str, fields: Mapping[str, Any], spec: SubConfigSpec | None, hint: str
) -> PreTrainedConfig:
    """The sub-config that the dict ``fields`` describes (``where`` names it in messages; ``spec`` is the family's
    default for it, if any; ``hint`` names model types that fit). A dict resolved by ``model_type`` must give one;
    a fixed-class dict must not name another class's. ``@strict`` errors become ``TypeError`` / ``ValueError``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = dict(fields)
    fixed = _fixed_class(spec) if spec is not None else None
    model_type = fields.pop("model_type", None)
    if fixed is not None:
        if model_type is not None and model_type != fixed.model_type:
            raise ValueError(
                f"{where} names model_type '{model_type}', but this family's {where} is always a '{fixed.model_type}' "
                f"({fixed.__name__}); leave model_type out (or give '{fixed.model_type}')"
            )
        config_class = fixed
    else:
        default = spec.model_type if spec is not None else None
        if (not isinstance(model_type, str) or not model_type) and default in CONFIG_MAPPING:
            # as transformers' own composite configs: a dict without model_type is the family's default kind, but
            # only when every key is one that kind reads (keys it does not know describe another architecture)
            # only when every key is one that kind reads; keys it does not read may describe another architecture,
            # so they are named (a warning, not an error: transformers' own composites take such dicts, and its
            # model tests pass them with keys of their own)
            foreign = unknown_keys(CONFIG_MAPPING[default], fields)
            if foreign:
                logger.warning(
                    f"{where} is a dict without a 'model_type', so it is built as the family's default '{default}', "
                    f"which does not read its keys {foreign[:8]}; if they describe another architecture, add "
                    f"\"model_type\" to the dict (e.g. {hint}) or pass its PreTrainedConfig"
                )
            model_type = default
        if not isinstance(model_type, str) or not model_type:
            raise ValueError(
                f"{where} is a dict without a 'model_type'; add \"model_type\" to the dict (e.g. {hint}) or pass its "
                f"PreTrainedConfig"
            )
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{where} has model_type '{model_type}', which transformers does not know; use e.g. {hint}")
        config_class = CONFIG_MAPPING[model_type]
    warn_likely_typos(where, config_class, fields)
    # sizes first: some configs divide by them while they are built (a head count of 0)
    check_positive_sizes(where, _SizesOf(config_class, fields))
    try:
        return config_class(**fields)
    except StrictDataclassClassValidationError as error:
        raise ValueError(f"{where} ({config_class.__name__}) is inconsistent: {error.__cause__}") from error
    except StrictDataclassError as error:
        cause = error.__cause__ if error.__cause__ is not None else error
        raise TypeError(
            f"{where} ({config_class.__name__}): {cause}; give each field its documented type (numbers as numbers, "
            f"booleans as true / false)"
        ) from error


# ----- sizes ---------------------------------------------------------------------------------------------------------
# the size fields (transformers' standard names, read through each config's attribute_map: T5's d_model is its
# hidden_size) that must be positive wherever a sub-config has them
SIZE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "max_position_embeddings", "image_size", "patch_size", "num_channels",
)  # fmt: skip
# list-valued sizes (a ConvNeXt's stage widths and depths): every entry positive
SIZE_LIST_FIELDS = ("hidden_sizes", "depths")


class _SizesOf:
    """The size fields of a sub-config dict, read as its config class reads them (``attribute_map``), for
    :func:`check_positive_sizes` before the class is built."""

    def __init__(self, config_class: type, fields: Mapping[str, Any]):
        self.attribute_map, self.model_type = config_class.attribute_map, config_class.model_type
        self._fields = fields

    def __getattr__(self, name: str) -> Any:
        return self._fields.get(self.__dict__["attribute_map"].get(name, name))


def check_positive_sizes(where: str, config: PreTrainedConfig | _SizesOf) -> None:
    """``ValueError`` naming the sub-config and the field when one of :data:`SIZE_FIELDS` (an int, or a list of
    ints for :data:`SIZE_LIST_FIELDS`) is zero or negative: such a model cannot be built or computes nothing."""
    for name in SIZE_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            stored = config.attribute_map.get(name, name)
            spelled = name if stored == name else f"{stored} (its {name})"
            raise ValueError(
                f"{where}.{spelled} is {value}, but it must be a positive integer: a '{config.model_type}' with {value} "
                f"{name.replace('_', ' ')} cannot be built; give the size of the model you mean (e.g. the checkpoint's "
                f"config.json value)"
            )
    for name in SIZE_LIST_FIELDS:
        values = getattr(config, name, None)
        positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
        if isinstance(values, (list, tuple)) and not all(map(positive, values)):
            raise ValueError(f"{where}.{name} is {values!r}, but every entry must be a positive integer")


def check_positive(config_name: str, name: str, value: Any, allow_none: bool = False) -> None:
    """``ValueError`` unless ``value`` (a vlmzoo size field, its type already checked) is at least 1."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{config_name}.{name} must be a positive integer, got {value!r}")


def refuse_read_only_keys(config_class: type, given: dict[str, Any], root: type) -> dict[str, Any]:
    """Pop from ``given`` the keys that name a read-only property of a vlmzoo config class (``image_seq_length``
    of a Q-Former family is computed from ``num_query_tokens``): returns them, for :func:`check_read_only_keys`."""
    popped = {}
    for key in list(given):
        for klass in config_class.__mro__:
            attribute = klass.__dict__.get(key)
            if isinstance(attribute, property):
                if attribute.fset is None and issubclass(klass, root):
                    popped[key] = given.pop(key)
                break
    return popped


def check_read_only_keys(config: PreTrainedConfig, popped: Mapping[str, Any]) -> None:
    """``ValueError`` for a read-only key given with another value than the config computes (the same value,
    as a converted config may carry it, is accepted)."""
    for key, value in popped.items():
        computed = getattr(config, key)
        if value != computed or type(value) is not type(computed):
            summary = (inspect.getdoc(getattr(type(config), key)) or key).split("\n")[0].rstrip(".")
            raise ValueError(
                f"{type(config).__name__}.{key} is computed from other fields, not set ({summary}: {computed!r} here); "
                f"got {value!r}: leave {key} out and change the fields it is computed from"
            )


# ----- saving --------------------------------------------------------------------------------------------------------
def check_save_directory(save_directory: Any, what: str) -> None:
    """``FileExistsError`` when ``save_directory`` is an existing file (transformers' models log an error and save
    nothing there, its configs raise a bare ``AssertionError``). ``what`` names the caller, e.g. ``"model"``."""
    import os

    if isinstance(save_directory, (str, os.PathLike)) and os.path.isfile(save_directory):
        raise FileExistsError(
            f"cannot save the {what} to '{os.fspath(save_directory)}': it is an existing file, and save_pretrained "
            f"writes a directory; pass a directory path (created when missing) or move the file away"
        )
