# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the Q-Former families: BLIP-2 (MiniGPT-4 is a preset of it) and InstructBLIP.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language
Models" (2023); Dai et al., "InstructBLIP" (2023); Zhu et al., "MiniGPT-4" (2023). Field names follow
transformers' ``Blip2Config`` / ``InstructBlipConfig`` (``vision_config``, ``qformer_config``, ``text_config``,
``num_query_tokens``), so converted configs read naturally. The sub-configs are transformers' own
(``Blip2VisionConfig`` / ``Blip2QFormerConfig`` and the InstructBLIP ones); the Q-Former's cross-attention width
always follows the vision tower (``qformer_config.encoder_hidden_size``).
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
from transformers.models.instructblip.configuration_instructblip import (
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
)

from .configuration_base import ZooVLMConfig

# components of every Q-Former model (the learned queries belong to the Q-Former)
QFORMER_COMPONENTS: dict[str, tuple[str, ...]] = {
    "vision_tower": ("vision_tower",),
    "qformer": ("qformer", "query_tokens"),
    "multi_modal_projector": ("multi_modal_projector",),
    "language_model": ("language_model",),
}


@strict
class ZooBlip2Config(ZooVLMConfig):
    r"""
    Args:
        vision_config: a ``Blip2VisionConfig`` (EVA ViT-g/14 at 224 px by default).
        qformer_config: a ``Blip2QFormerConfig`` (BERT-base sized, cross-attention every 2nd layer).
        text_config: a decoder-only LM config (OPT by default; Llama / Vicuna for MiniGPT-4) or a T5 config
            (Flan-T5: the prompt, after the image tokens, goes through T5's encoder; the answer is decoded).
        num_query_tokens: learned queries, hence image tokens per image (32).
        image_token_id: id of the ``<image>`` placeholder (the processor puts ``num_query_tokens`` of them
            before the prompt). ``None`` by default, as transformers' ``Blip2Config.image_token_index``: the id
            depends on the tokenizer (OPT checkpoints: 50265), so presets and conversion set it.
        training_stages: stage name -> trained components (defaults: the BLIP-2 recipe).
    """

    model_type = "vlmzoo_blip2"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": Blip2VisionConfig,
        "qformer_config": Blip2QFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="opt"),
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = QFORMER_COMPONENTS
    # encoder-decoder LMs whose head is one linear layer on the decoder's (optionally d_model^-0.5 scaled,
    # ``scale_decoder_outputs``) states, which modeling/encoder_decoder.py reproduces exactly (Flan-T5)
    encoder_decoder_language_models: ClassVar[tuple[str, ...]] = ("t5", "umt5")
    # BLIP-2: stage 1 (representation learning) trains the Q-Former and its queries on a frozen ViT (lr 1e-4);
    # stage 2 (generative pre-training) trains the Q-Former + projection with the LLM frozen (lr 1e-4);
    # instruction / task fine-tuning keeps the LLM frozen (InstructBLIP: Q-Former + projection, lr 1e-5)
    default_training_stages: ClassVar[dict[str, list[str]]] = {
        "qformer_pretrain": ["qformer"],
        "align": ["qformer", "multi_modal_projector"],
        "instruct": ["qformer", "multi_modal_projector"],
        "full": ["vision_tower", "qformer", "multi_modal_projector", "language_model"],
    }
    default_learning_rates: ClassVar[dict[str, float]] = {
        "qformer_pretrain": 1e-4,
        "align": 1e-4,
        "instruct": 1e-5,
        "full": 1e-5,
    }

    qformer_config: dict | Blip2QFormerConfig | None = None
    image_token_id: int | None = None
    num_query_tokens: int = 32
    # width of the stage-1 image-text projections (ITC), as transformers' Blip2Config
    image_text_hidden_size: int = 256
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not isinstance(self.num_query_tokens, int) or self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be a positive integer, got {self.num_query_tokens!r}")
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size

    @property
    def use_decoder_only_language_model(self) -> bool:
        """transformers' Blip2Config flag: ``False`` with an encoder-decoder LM (Flan-T5)."""
        return not self.text_config.is_encoder_decoder

    @property
    def image_seq_length(self) -> int:
        """Image tokens per image: one per learned query."""
        return self.num_query_tokens


@strict
class ZooInstructBlipConfig(ZooBlip2Config):
    r"""
    InstructBLIP: the BLIP-2 layout whose Q-Former also reads the instruction (its own tokenizer and word
    embeddings, ``qformer_config.vocab_size``). Default LM: Vicuna-style Llama. Same stages as BLIP-2; the paper
    instruction-tunes the Q-Former and projection only (lr 1e-5).
    """

    model_type = "vlmzoo_instructblip"
    sub_configs_defaults = {
        "vision_config": InstructBlipVisionConfig,
        "qformer_config": InstructBlipQFormerConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    qformer_config: dict | InstructBlipQFormerConfig | None = None


__all__ = ["ZooBlip2Config", "ZooInstructBlipConfig"]
