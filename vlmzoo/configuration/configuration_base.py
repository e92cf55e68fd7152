# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""The config base every family shares (docs/design.md §4, §5): sub-configs, the image token, the tie rule,
the component table and the typed training-stage table.

A family config subclasses :class:`ZooVLMConfig`, declares its ``sub_configs_defaults``, its
``component_table`` (component name -> attribute paths in the base model; every parameter of the model
belongs to exactly one component) and its paper's recipe (``default_training_stages`` and
``default_learning_rates``). ``training_stages`` and ``recipe_learning_rates`` stored in the config (and in
``config.json``) override the recipe (a preset such as MiniGPT-4 carries its own); every stage is checked
against the component table, every learning rate against the stages.

Fields every family shares are validated here at construction, with a message that says what to change:
``image_token_id`` inside the text vocabulary, a ``vision_config`` that describes a vision model and a
``text_config`` that describes a language model, and (for families that have them) ``vision_feature_layer``
within the tower's hidden states (``num_hidden_layers + 1`` entries, negative indices from the end) and a known
``vision_feature_select_strategy``.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
)

from ..geometry import dropped_tokens

# attributes by which a sub-config shows that it describes a vision model (CLIP, SigLIP, ConvNeXt, Qwen2-VL, ...)
VISION_CONFIG_MARKERS = ("image_size", "patch_size", "num_channels", "in_channels", "in_chans")


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


@strict
class ZooVLMConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config: the vision tower's transformers config.
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

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    training_stages: dict[str, list[str]] | None = None
    recipe_learning_rates: dict[str, float] | None = None
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_shared_fields()
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

    def _check_shared_fields(self) -> None:
        """The sub-configs' kinds, the image token and the vision feature selection (see the module docstring)."""
        vision, text = self.vision_config, self.text_config
        if vision is not None:
            vision_type = getattr(vision, "model_type", type(vision).__name__)
            language_model_types = {*MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, *MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES}
            if vision_type in language_model_types or not any(
                hasattr(vision, marker) for marker in VISION_CONFIG_MARKERS
            ):
                raise ValueError(
                    f"vision_config is a '{vision_type}' config, which does not describe a vision model (it has none of "
                    f"{', '.join(VISION_CONFIG_MARKERS)}); pass the vision tower's config (e.g. clip_vision_model, "
                    f"siglip_vision_model) as vision_config and the language model's as text_config"
                )
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

    def demo_overrides(self) -> tuple[dict, str]:
        """What ``vlmzoo demo`` changes in this (tiny preset) config so that it learns in minutes on a CPU:
        ``(overrides, why)``, the overrides passed to ``vlmzoo.presets.get_config`` and the reason, printed.
        Families override it (docs/adding_a_family.md); the default changes nothing: ``({}, "")``."""
        return {}, ""

    def _check_encoder_decoder_lm(self, model_type: str) -> None:
        supported = self.encoder_decoder_language_models
        if model_type not in supported:
            takes = f"the encoder-decoders {list(supported)}" if supported else "no encoder-decoder"
            raise ValueError(
                f"text_config is a '{model_type}' encoder-decoder language model; {type(self).__name__} takes decoder-only "
                f"language models and {takes}"
            )
