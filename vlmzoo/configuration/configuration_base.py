# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""The config base every family shares (DESIGN.md §4, §5): sub-configs, the image token, the tie rule,
the component table and the typed training-stage table.

A family config subclasses :class:`ZooVLMConfig`, declares its ``sub_configs_defaults``, its
``component_table`` (component name -> attribute paths in the base model; every parameter of the model
belongs to exactly one component) and its paper's recipe (``default_training_stages`` and
``recipe_learning_rates``). ``training_stages`` stored in the config (and in ``config.json``) overrides
the recipe; every stage is checked against the component table.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class ZooVLMConfig(PreTrainedConfig):
    r"""
    Args:
        vision_config: the vision tower's transformers config.
        text_config: the language model's transformers config.
        image_token_id: id of the image placeholder token in the tokenizer.
        training_stages: stage name -> components that train (defaults: the family's recipe).
        tie_word_embeddings: tie ``lm_head`` to the input embeddings; on whenever the text config ties.
    """

    # component name -> attribute paths of the base model (the generation class adds `lm_head` to
    # "language_model"); families override
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {}
    default_training_stages: ClassVar[dict[str, list[str]]] = {}
    # the recipe's learning rate of each default stage
    recipe_learning_rates: ClassVar[dict[str, float]] = {}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    training_stages: dict[str, list[str]] | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
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
