# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""The config base every family shares (docs/design.md §4, §5): sub-configs, the image token, the tie rule,
the component table and the typed training-stage table.

A family config subclasses :class:`ZooVLMConfig`, declares its ``sub_configs_defaults``, its
``component_table`` (component name -> attribute paths in the base model; every parameter of the model
belongs to exactly one component) and its paper's recipe (``default_training_stages`` and
``default_learning_rates``). ``training_stages`` and ``recipe_learning_rates`` stored in the config (and in
``config.json``) override the recipe (a preset such as MiniGPT-4 carries its own); every stage is checked
against the component table, every learning rate against the stages.

Towers (docs/design.md §4): ``vision_config`` is the primary tower, ``aux_vision_config`` a high-resolution branch
(LLaVA-HR's, Mini-Gemini's and FILA's ConvNeXt) and ``vision_configs`` an ordered, named mapping of experts
(EAGLE's CLIP / ConvNeXt / SAM / ..., LEO's InternViT + SAM); the model builds each with ``AutoModel.from_config``
(components ``vision_tower``, ``aux_vision_tower``, ``vision_towers``). All default to ``None``, so a family that
does not use one is unchanged. Each accepts a ``PreTrainedConfig`` or a dict with a ``model_type`` (for
``aux_vision_config`` a family may declare a default in ``sub_configs_defaults``; for ``vision_configs`` in
``vision_configs_defaults``: used when the field is ``None``; a dict must still name its ``model_type``, as every
sub-config dict resolved by ``model_type`` must, ``validation.py``).
``vision_configs`` keeps its order in memory (a dict) and on disk: ``to_dict`` writes
it as a list of ``{"name": ..., "config": {...}}`` entries (JSON objects lose their order: transformers writes
``config.json`` with sorted keys), and that list form is accepted back. ``attn_implementation`` (a string, or a
dict keyed by sub-config name, ``{"vision_configs": {"clip": ...}}`` for one expert) reaches ``aux_vision_config``
and every expert as transformers makes it reach the sub-configs it knows.

Fields every family shares are validated here at construction, with a message that says what to change:
``image_token_id`` inside the text vocabulary, a ``vision_config`` (and ``aux_vision_config``, and every expert of
``vision_configs``) that describes a vision model, expert names that are valid module names, a ``text_config``
that describes a language model, and (for families that have them) ``vision_feature_layer`` within the tower's
hidden states (``num_hidden_layers + 1`` entries, negative indices from the end) and a known
``vision_feature_select_strategy``. ``validation.py`` holds the checks of what a user passes: unknown keys are
logged with the closest valid key, vlmzoo's fields are type-checked on every assignment (``TypeError``), sub-config
dicts must name their ``model_type`` where it selects the class, and every sub-config's sizes must be positive.
"""

from __future__ import annotations

import keyword
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from ..geometry import dropped_tokens
from .validation import (
    check_field_type,
    check_positive_sizes,
    check_read_only_keys,
    check_save_directory,
    declared_field_types,
    refuse_read_only_keys,
    sub_config_from_dict,
    warn_unknown_keys,
)

# attributes by which a sub-config shows that it describes a vision model (CLIP, SigLIP, ConvNeXt, Qwen2-VL, ...)
VISION_CONFIG_MARKERS = ("image_size", "patch_size", "num_channels", "in_channels", "in_chans")

# the model types a message suggests for a tower dict without one
VISION_MODEL_TYPES_HINT = "'clip_vision_model', 'siglip_vision_model' or 'convnext'"

# the keys of one serialised expert entry of `vision_configs` (see the module docstring)
EXPERT_ENTRY_KEYS = ("name", "config")


def check_feature_layers(layers, num_hidden_layers: int, name: str = "vision_feature_layer") -> list[int]:
    """The hidden-state indices in ``layers`` (an int or a non-empty list of ints), each checked against a tower
    whose ``hidden_states`` has ``num_hidden_layers + 1`` entries (embeddings first; negative indices count from
    the end). ``ValueError`` / ``TypeError`` say which index is wrong and what the valid range is."""
    requested = [layers] if isinstance(layers, int) and not isinstance(layers, bool) else layers
    if not isinstance(requested, (list, tuple)) or not requested:
        raise TypeError(f"{name} must be an int or a non-empty list of ints, got {layers!r}")
    states = num_hidden_layers + 1
    for layer in requested:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{name} must hold ints, got {layer!r} in {layers!r}")
        if not -states <= layer < states:
            raise ValueError(
                f"{name}={layers!r}: index {layer} is outside the vision tower's {states} hidden states "
                f"({num_hidden_layers} layers + the embeddings); use an index in [{-states}, {states - 1}], e.g. -2 "
                f"for the second-to-last layer"
            )
    return list(requested)


def tower_config_from(value: Any, where: str, spec: SubConfigSpec | None = None) -> PreTrainedConfig:
    """The ``PreTrainedConfig`` of one tower given as a config or as a dict with a ``model_type``.

    ``where`` names the field in messages (``aux_vision_config``, ``vision_configs['clip']``); ``spec`` is the
    family's default for it, as ``sub_configs_defaults`` (a fixed-class spec lets a dict leave ``model_type`` out).
    """
    if isinstance(value, PreTrainedConfig):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{where} must be a PreTrainedConfig or a dict with a 'model_type', got {type(value).__name__}"
        )
    hint = repr(spec.model_type) if spec is not None else VISION_MODEL_TYPES_HINT
    return sub_config_from_dict(where, value, spec, hint)


def _expert_entries(value: Any) -> list[tuple[Any, Any]]:
    """(name, config) pairs of ``vision_configs`` given as a mapping, as the serialised list of
    ``{"name": ..., "config": ...}`` entries, or as a list of (name, config) pairs; order kept."""
    if isinstance(value, Mapping):
        return list(value.items())
    if not isinstance(value, (list, tuple)):
        raise TypeError(
            f"vision_configs must map expert names to configs (a dict, in order), got {type(value).__name__}"
        )
    entries = []
    for index, entry in enumerate(value):
        if isinstance(entry, Mapping) and sorted(entry) == sorted(EXPERT_ENTRY_KEYS):
            entries.append((entry["name"], entry["config"]))
        elif isinstance(entry, (list, tuple)) and len(entry) == 2:
            entries.append((entry[0], entry[1]))
        else:
            raise TypeError(
                f"vision_configs[{index}] must be a {{'name': ..., 'config': ...}} entry or a (name, config) pair, "
                f"got {entry!r:.80}"
            )
    return entries


def check_expert_name(name: Any) -> str:
    """``name`` when it can name an expert's module (``vision_towers.<name>``); else ``ValueError`` / ``TypeError``."""
    if not isinstance(name, str):
        raise TypeError(f"vision_configs names must be strings, got {name!r}")
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValueError(
            f"vision_configs name {name!r} is not a valid module name; use a Python identifier such as 'clip', "
            f"'siglip' or 'convnext_1024' (letters, digits and underscores, not starting with a digit, not a keyword)"
        )
    return name


def build_vision_configs(value: Any, defaults: Mapping[str, SubConfigSpec]) -> dict[str, PreTrainedConfig] | None:
    """The ordered ``name -> PreTrainedConfig`` mapping of ``vision_configs`` (``None`` stays ``None`` unless the
    family declares ``vision_configs_defaults``); names and emptiness checked here, kinds in ``_check_shared_fields``."""
    if value is None:
        if not defaults:
            return None
        return {name: spec.create_subconfig(name, None)[0] for name, spec in defaults.items()}
    experts: dict[str, PreTrainedConfig] = {}
    for name, config in _expert_entries(value):
        check_expert_name(name)
        if name in experts:
            raise ValueError(f"vision_configs names the expert '{name}' twice; give each expert one unique name")
        experts[name] = tower_config_from(config, f"vision_configs[{name!r}]", defaults.get(name))
    if not experts:
        raise ValueError(
            "vision_configs is empty; give at least one expert (name -> vision config), or None for a family without "
            "experts"
        )
    return experts


def _check_describes_vision_model(config: PreTrainedConfig, where: str, hint: str) -> None:
    """``ValueError`` unless ``config`` describes a vision model (one of ``VISION_CONFIG_MARKERS``, not an LM type)."""
    model_type = getattr(config, "model_type", type(config).__name__)
    language_model_types = {*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, *MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}
    if model_type in language_model_types or not any(hasattr(config, marker) for marker in VISION_CONFIG_MARKERS):
        raise ValueError(
            f"{where} is a '{model_type}' config, which does not describe a vision model (it has none of "
            f"{', '.join(VISION_CONFIG_MARKERS)}); {hint}"
        )


def _implementation_for(requested: str | dict | None, key: str, current: str | None):
    """What a sub-config named ``key`` gets from a requested implementation (a string, or a dict keyed by sub-config
    name whose missing keys keep the current value), as transformers' ``_attn_implementation`` setter resolves it."""
    return requested.get(key, current) if isinstance(requested, dict) else requested


# every vlmzoo family's model_type starts so (docs/design.md §2: `vlmzoo_<key>`)
VLMZOO_MODEL_TYPE_PREFIX = "vlmzoo_"


@strict
class ZooVLMConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config: the vision tower's transformers config (the primary tower).
        aux_vision_config: a high-resolution branch's config (e.g. a ConvNeXt); ``None`` for families without one.
        vision_configs: an ordered mapping expert name -> config (e.g. ``{"clip": ..., "siglip": ..., "convnext":
            ...}``); each value a ``PreTrainedConfig`` or a dict with a ``model_type``; names are module names
            (``vision_towers.<name>``); ``None`` for families without experts.
        text_config: the language model's transformers config.
        image_token_id: id of the image placeholder token in the tokenizer.
        training_stages: stage name -> components that train (defaults: the family's recipe).
        recipe_learning_rates: stage name -> the recipe's learning rate (defaults: the family's paper).
        tie_word_embeddings: tie ``lm_head`` to the input embeddings; ``None`` (default): as the text config
            does. ``False`` unties even a text config that ties (a Flan-T5 head stored apart from the embeddings;
            transformers 5.24's ``T5Config`` always says it ties).
    """

    # component name -> attribute paths of the base model (the generation class adds `lm_head` to
    # "language_model"); families override
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {}
    default_training_stages: ClassVar[dict[str, list[str]]] = {}
    # the paper's learning rate of each default stage
    default_learning_rates: ClassVar[dict[str, float]] = {}
    # the encoder-decoder language models (text config model_types) the family accepts, through the mixins of
    # modeling/encoder_decoder.py; empty: decoder-only LMs only
    encoder_decoder_language_models: ClassVar[tuple[str, ...]] = ()
    # the family's default experts (name -> spec, in order), used when `vision_configs` is None; a dict given for one
    # of these names may leave out its `model_type`. (`vision_configs` is never in `sub_configs_defaults`: transformers
    # reads those as single configs.)
    vision_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {}

    vision_config: dict | PreTrainedConfig | None = None
    aux_vision_config: dict | PreTrainedConfig | None = None
    vision_configs: Any = None  # a dict or a list of entries, checked (entry by entry) by build_vision_configs
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    training_stages: dict[str, list[str]] | None = None
    recipe_learning_rates: dict[str, int | float] | None = None
    tie_word_embeddings: bool | None = None

    def __setattr__(self, key: str, value: Any) -> None:
        # `@strict` skips vlmzoo's (string) annotations: the fields vlmzoo declares are checked here, on every
        # assignment (the dataclass __init__ assigns each field too)
        name = type(self).attribute_map.get(key, key)
        annotation = declared_field_types(type(self), ZooVLMConfig).get(name)
        if annotation is not None:
            check_field_type(type(self).__name__, name, value, annotation)
        super().__setattr__(key, value)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """transformers' ``from_dict``, refusing another vlmzoo family's config (a checkpoint opened with the wrong
        class would otherwise fail later on a field it lacks, e.g. a training stage naming the other family's
        components), with the class that loads it."""
        stored = config_dict.get("model_type") if isinstance(config_dict, dict) else None
        if (
            isinstance(stored, str) and stored.startswith(VLMZOO_MODEL_TYPE_PREFIX) and cls.model_type
            and stored != cls.model_type
        ):  # fmt: skip
            raise ValueError(
                f"this checkpoint is a '{stored}' model, not a '{cls.model_type}' one ({cls.__name__}); load it with "
                f"transformers' AutoModelForImageTextToText / AutoConfig (import vlmzoo first), or with the classes of "
                f"the '{stored}' family"
            )
        return super().from_dict(config_dict, **kwargs)

    def __post_init__(self, **kwargs):
        read_only = refuse_read_only_keys(type(self), kwargs, ZooVLMConfig)
        warn_unknown_keys(self, kwargs, ZooVLMConfig)
        # sub-config dicts are built here, so that one without the model_type that selects its class is refused and
        # @strict errors inside it name it; transformers' own loop below then finds configs
        for key, spec in self.sub_configs_defaults.items():
            value = getattr(self, key)
            if isinstance(value, Mapping):
                setattr(self, key, sub_config_from_dict(key, value, spec, repr(spec.model_type)))
        # the towers transformers does not build itself are built first, so that the attention implementation set in
        # super().__post_init__ reaches them
        if "aux_vision_config" not in self.sub_configs_defaults and self.aux_vision_config is not None:
            self.aux_vision_config = tower_config_from(self.aux_vision_config, "aux_vision_config")
        self.vision_configs = build_vision_configs(self.vision_configs, self.vision_configs_defaults)
        super().__post_init__(**kwargs)
        self._check_shared_fields()
        check_read_only_keys(self, read_only)
        if self.tie_word_embeddings is None:
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        if self.training_stages is None:
            self.training_stages = {name: list(parts) for name, parts in self.default_training_stages.items()}
        for stage, components in self.training_stages.items():
            if isinstance(components, str) or not all(isinstance(c, str) for c in components):
                raise TypeError(f"training stage '{stage}' must list component names, got {components!r}")
            unknown = [c for c in components if c not in self.component_table]
            if unknown:
                raise ValueError(
                    f"training stage '{stage}' names unknown components {unknown}; "
                    f"valid components: {list(self.component_table)}"
                )
        if self.recipe_learning_rates is None:
            self.recipe_learning_rates = dict(self.default_learning_rates)
        for stage, rate in self.recipe_learning_rates.items():
            if stage not in self.training_stages:
                raise ValueError(
                    f"recipe_learning_rates names stage '{stage}', which is not a training stage of this config; "
                    f"stages: {sorted(self.training_stages)}"
                )
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
                raise ValueError(f"the learning rate of stage '{stage}' must be a positive number, got {rate!r}")

    def _sub_configs_by_name(self) -> Iterable[tuple[str, PreTrainedConfig]]:
        """(name in messages, config) of every sub-config: the declared ones, the high-resolution tower, the experts."""
        for key in self.sub_configs_defaults:
            value = getattr(self, key, None)
            if isinstance(value, PreTrainedConfig):
                yield key, value
        if isinstance(self.aux_vision_config, PreTrainedConfig) and "aux_vision_config" not in self.sub_configs_defaults:
            yield "aux_vision_config", self.aux_vision_config
        for name, expert in (self.vision_configs or {}).items():
            yield f"vision_configs[{name!r}]", expert

    def _check_shared_fields(self) -> None:
        """The sub-configs' kinds and sizes, the image token and the vision feature selection (see the module
        docstring)."""
        for where, sub_config in self._sub_configs_by_name():
            check_positive_sizes(where, sub_config)
        vision, text = self.vision_config, self.text_config
        if vision is not None:
            _check_describes_vision_model(
                vision, "vision_config", "pass the vision tower's config (e.g. clip_vision_model, siglip_vision_model) "
                "as vision_config and the language model's as text_config",
            )  # fmt: skip
        if self.aux_vision_config is not None:
            _check_describes_vision_model(
                self.aux_vision_config, "aux_vision_config",
                "pass the high-resolution tower's config (e.g. convnext) as aux_vision_config",
            )  # fmt: skip
        for name, expert in (self.vision_configs or {}).items():
            _check_describes_vision_model(
                expert, f"vision_configs[{name!r}]", "every expert must be a vision tower's config (e.g. "
                "clip_vision_model, siglip_vision_model, convnext)",
            )  # fmt: skip
        vocab_size = getattr(text, "vocab_size", None) if text is not None else None
        if text is not None and not isinstance(vocab_size, int):
            raise ValueError(
                f"text_config is a '{getattr(text, 'model_type', type(text).__name__)}' config without a vocab_size, "
                f"which does not describe a language model; pass the language model's config as text_config"
            )
        if text is not None and getattr(text, "is_encoder_decoder", False):
            self._check_encoder_decoder_lm(text.model_type)
        self.is_encoder_decoder = bool(text is not None and getattr(text, "is_encoder_decoder", False))
        if self.image_token_id is not None and vocab_size is not None and not 0 <= self.image_token_id < vocab_size:
            raise ValueError(
                f"image_token_id={self.image_token_id} is outside the text vocabulary (vocab_size={vocab_size}); use the "
                f"tokenizer's image token id, and when the token was added to the tokenizer, grow text_config.vocab_size "
                f"(and the embeddings) to len(tokenizer)"
            )
        layers = getattr(self, "vision_feature_layer", None)
        depth = getattr(vision, "num_hidden_layers", None)
        if layers is not None and isinstance(depth, int):
            check_feature_layers(layers, depth)
        strategy = getattr(self, "vision_feature_select_strategy", None)
        if strategy is not None:
            dropped_tokens(strategy)  # ValueError naming the valid strategies

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """transformers' ``save_pretrained``; an existing file at ``save_directory`` raises ``FileExistsError``."""
        check_save_directory(save_directory, "config")
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def demo_overrides(self) -> tuple[dict, str]:
        """What ``vlmzoo demo`` changes in this (tiny preset) config so that it learns in minutes on a CPU:
        ``(overrides, why)``, the overrides passed to ``vlmzoo.presets.get_config`` and the reason, printed.
        Families override it (docs/adding_a_family.md); the default changes nothing: ``({}, "")``."""
        return {}, ""

    def demo_image_size(self) -> int:
        """The side of the square synthetic images ``vlmzoo demo`` draws for this family: the primary tower's input
        size by default; a family whose tower takes any size (native resolution) names one."""
        return self.vision_config.image_size

    def _check_encoder_decoder_lm(self, model_type: str) -> None:
        supported = self.encoder_decoder_language_models
        if model_type not in supported:
            takes = f"the encoder-decoders {list(supported)}" if supported else "no encoder-decoder"
            raise ValueError(
                f"text_config is a '{model_type}' encoder-decoder language model; {type(self).__name__} takes decoder-only "
                f"language models and {takes}"
            )

    # ----- the towers transformers does not know as sub-configs: attention implementation and serialisation ----------
    def _towers_outside_sub_configs(self) -> Iterable[tuple[str, str | None, PreTrainedConfig]]:
        """(field, expert name or None, config) of ``aux_vision_config`` (when the family's ``sub_configs_defaults``
        does not declare it) and of every expert; transformers' own propagation covers ``sub_configs``."""
        aux = self.__dict__.get("aux_vision_config")
        if isinstance(aux, PreTrainedConfig) and "aux_vision_config" not in self.sub_configs:
            yield "aux_vision_config", None, aux
        experts = self.__dict__.get("vision_configs")
        if isinstance(experts, dict):
            for name, expert in experts.items():
                if isinstance(expert, PreTrainedConfig):
                    yield "vision_configs", name, expert

    def _spread_implementation(self, attribute: str, requested: str | dict | None) -> None:
        for field_name, name, tower in self._towers_outside_sub_configs():
            current = getattr(tower, attribute, None)
            value = _implementation_for(requested, field_name, current)
            if name is not None:  # a dict for the experts may name each one
                value = _implementation_for(value, name, current)
            setattr(tower, attribute, value)

    @property
    def _attn_implementation(self):
        return self._attn_implementation_internal

    @_attn_implementation.setter
    def _attn_implementation(self, value: str | dict | None):
        PreTrainedConfig._attn_implementation.fset(self, value)
        self._spread_implementation("_attn_implementation", value)

    @property
    def _experts_implementation(self):
        return self._experts_implementation_internal

    @_experts_implementation.setter
    def _experts_implementation(self, value: str | dict | None):
        PreTrainedConfig._experts_implementation.fset(self, value)
        self._spread_implementation("_experts_implementation", value)

    def to_dict(self) -> dict[str, Any]:
        """transformers' ``to_dict``, with ``vision_configs`` as the ordered list of ``{"name", "config"}`` entries."""
        output = super().to_dict()
        if self.vision_configs is not None:
            entries = []
            for name, expert in self.vision_configs.items():
                fields = expert.to_dict()
                fields.pop("transformers_version", None)  # as transformers writes its own sub-configs
                entries.append({"name": name, "config": fields})
            output["vision_configs"] = entries
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        """transformers' ``to_diff_dict`` (what ``config.json`` holds), without the tower fields a family leaves unset,
        so the configs of families without a high-resolution branch or experts read as before."""
        output = super().to_diff_dict()
        for name in ("aux_vision_config", "vision_configs"):
            if output.get(name, ...) is None:
                del output[name]
        return output
