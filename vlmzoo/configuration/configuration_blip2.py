# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Configurations of the Q-Former families: BLIP-2 (MiniGPT-4 is a preset of it) and InstructBLIP.

Li et al., "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and Large Language
Models" (2023); Dai et al., "InstructBLIP" (2023); Zhu et al., "MiniGPT-4" (2023). Field names follow
transformers' ``Blip2Config`` / ``InstructBlipConfig`` (``vision_config``, ``qformer_config``, ``text_config``,
``num_query_tokens``), so converted configs read naturally. The sub-configs are transformers' own
(``Blip2VisionConfig`` / ``Blip2QFormerConfig`` and the InstructBLIP ones); the Q-Former's cross-attention width
always follows the vision tower (``qformer_config.encoder_hidden_size``).

Also both families' presets (``vlmzoo.presets.get_config("blip2" | "instructblip", name)``; MiniGPT-4 is a
BLIP-2 preset), their demo settings (``ZooBlip2Config.demo_overrides``, inherited by InstructBLIP) and the
encoder-decoder language models they take (``encoder_decoder_language_models``: the T5 family).
"""

from __future__ import annotations

import math
from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.blip_2.configuration_blip_2 import Blip2QFormerConfig, Blip2VisionConfig
from transformers.models.instructblip.configuration_instructblip import (
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
)

from ..presets import register_preset
from ..tiny_tokenizer import IMAGE_TOKEN, build_tiny_tokenizer
from .configuration_base import ZooVLMConfig
from .configuration_llava import tiny_llama_text_config, vicuna_text_config
from .validation import check_positive

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
    initializer_range: int | float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        name = type(self).__name__
        check_positive(name, "num_query_tokens", self.num_query_tokens)
        check_positive(name, "image_text_hidden_size", self.image_text_hidden_size)
        if not (math.isfinite(self.initializer_range) and self.initializer_range >= 0):
            raise ValueError(
                f"{name}.initializer_range is the standard deviation of the initial weights: a finite number >= 0, "
                f"got {self.initializer_range!r}"
            )
        self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size

    @property
    def use_decoder_only_language_model(self) -> bool:
        """transformers' Blip2Config flag: ``False`` with an encoder-decoder LM (Flan-T5)."""
        return not self.text_config.is_encoder_decoder

    @property
    def image_seq_length(self) -> int:
        """Image tokens per image: one per learned query."""
        return self.num_query_tokens

    def demo_overrides(self) -> tuple[dict, str]:
        """``vlmzoo demo``: 64 px images, and stage 2 also trains the (random, tiny) language model."""
        vision = self.vision_config.to_dict()
        vision.update(image_size=64)
        stages = {name: list(parts) for name, parts in self.training_stages.items()}
        stages["instruct"] = [*stages["instruct"], "language_model"]
        why = (
            "with two demo overrides: 64 px images (preset: 32), and stage 2 also trains the language model.\n"
            "  The papers keep a pretrained LLM frozen; this tiny one starts from random weights."
        )
        return {"vision_config": vision, "training_stages": stages}, why


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


# ----- presets ------------------------------------------------------------------------------------------
_TINY_BLIP_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
    # transformers' default (1e-10) assumes pretrained EVA weights; a random tiny tower would see every image alike
    "initializer_range": 0.02,
}
_TINY_QFORMER = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "cross_attention_frequency": 1,
}


def _tiny_opt_config(tokenizer) -> dict:
    return {
        "model_type": "opt",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "word_embed_proj_dim": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _tiny_t5_config(tokenizer) -> dict:
    """A 2+2-layer Flan-T5-style LM (gated GELU; the decoder starts from the pad token, as T5's).

    Its head is tied to the embeddings: transformers 5.24's ``T5Config`` always ties, and reads the
    ``tie_word_embeddings: False`` below (Flan-T5's ``config.json`` value) as "do not scale the decoder's outputs by
    ``d_model ** -0.5``" (``scale_decoder_outputs=False``), as T5 v1.1 / Flan-T5 do not. A checkpoint whose head is
    stored apart is untied by the top-level ``tie_word_embeddings=False`` (the conversion sets it; the paper-size
    presets below do).
    """
    return {
        "model_type": "t5",
        "vocab_size": len(tokenizer),
        "d_model": 64,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "decoder_start_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


@register_preset(ZooBlip2Config, "tiny")
def _blip2_tiny(**overrides) -> dict:
    """BLIP-2 OPT in miniature: ViT 32 px / patch 8, a 2-layer Q-Former with 8 queries, a 2-layer OPT."""
    tokenizer = build_tiny_tokenizer()
    return {
        "vision_config": dict(_TINY_BLIP_VISION),
        "qformer_config": dict(_TINY_QFORMER),
        "text_config": _tiny_opt_config(tokenizer),
        "num_query_tokens": 8,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    }


@register_preset(ZooBlip2Config, "tiny-llama")
def _blip2_tiny_llama() -> dict:
    """BLIP-2 with a 2-layer Llama (the decoder family of BLIP-2 Vicuna / MiniGPT-4)."""
    return _blip2_tiny(text_config=tiny_llama_text_config(build_tiny_tokenizer()))


@register_preset(ZooBlip2Config, "tiny-t5")
def _blip2_tiny_t5() -> dict:
    """BLIP-2 with a 2+2-layer Flan-T5-style encoder-decoder (the prompt is encoded, the answer decoded; the head
    tied to the embeddings, the decoder's outputs unscaled)."""
    return _blip2_tiny(text_config=_tiny_t5_config(build_tiny_tokenizer()))


# MiniGPT-4: frozen ViT and Q-Former; one linear projection into a LLaMA-family LM trains in both stages
# (stage 1 lr 1e-4 on image-text pairs, stage 2 lr 3e-5 on the curated conversations)
MINIGPT4_STAGES = {
    "qformer_pretrain": ["qformer"],
    "align": ["multi_modal_projector"],
    "instruct": ["multi_modal_projector"],
    "full": ["vision_tower", "qformer", "multi_modal_projector", "language_model"],
}


MINIGPT4_LEARNING_RATES = {"align": 1e-4, "instruct": 3e-5, "full": 3e-5}


def _minigpt4_recipe() -> dict:
    return {
        "training_stages": {k: list(v) for k, v in MINIGPT4_STAGES.items()},
        "recipe_learning_rates": dict(MINIGPT4_LEARNING_RATES),
    }


@register_preset(ZooBlip2Config, "tiny-minigpt4")
def _blip2_tiny_minigpt4() -> dict:
    """MiniGPT-4 in miniature: BLIP-2's layout, a Llama LM, only the projection trains."""
    return {**_blip2_tiny_llama(), **_minigpt4_recipe()}


def _opt(hidden: int, layers: int, heads: int) -> dict:
    return {
        "model_type": "opt",
        "vocab_size": 50272,
        "hidden_size": hidden,
        "word_embed_proj_dim": hidden,
        "ffn_dim": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 2048,
        "bos_token_id": 2,
        "eos_token_id": 50118,
        "pad_token_id": 1,
    }


@register_preset(ZooBlip2Config, "blip2-opt-2.7b")
def _blip2_opt_27b() -> dict:
    """BLIP-2 OPT-2.7b: EVA ViT-g/14 at 224 px, 32 queries, OPT-2.7b (``<image>`` added as id 50265)."""
    return {"text_config": _opt(2560, 32, 32), "num_query_tokens": 32, "image_token_id": 50265}


def _flan_t5(d_model: int, d_ff: int, layers: int, heads: int) -> dict:
    """Flan-T5's text config (``tie_word_embeddings: False``: unscaled decoder outputs, see ``_tiny_t5_config``)."""
    return {
        "model_type": "t5",
        "vocab_size": 32128,
        "d_model": d_model,
        "d_kv": 64,
        "d_ff": d_ff,
        "num_layers": layers,
        "num_heads": heads,
        "feed_forward_proj": "gated-gelu",
        "tie_word_embeddings": False,
        "decoder_start_token_id": 0,
        "pad_token_id": 0,
        "eos_token_id": 1,
    }


@register_preset(ZooBlip2Config, "blip2-flan-t5-xl")
def _blip2_flan_t5_xl() -> dict:
    """BLIP-2 Flan-T5-XL: EVA ViT-g/14, 32 queries, Flan-T5-XL (24+24 layers, d_model 2048, its LM head stored apart
    from the embeddings: untied; ``<image>`` is 32100)."""
    return {
        "text_config": _flan_t5(2048, 5120, 24, 32),
        "num_query_tokens": 32,
        "image_token_id": 32100,
        "tie_word_embeddings": False,
    }


@register_preset(ZooBlip2Config, "minigpt4-vicuna-13b")
def _minigpt4_13b() -> dict:
    """MiniGPT-4 (Vicuna-13B): BLIP-2's frozen ViT-g + Q-Former (32 queries), one trainable Linear(768 -> 5120)."""
    return {
        "text_config": vicuna_text_config(5120, 40, 40, 13824),
        "num_query_tokens": 32,
        "image_token_id": 32000,
        **_minigpt4_recipe(),
    }


@register_preset(ZooBlip2Config, "minigpt4-vicuna-7b")
def _minigpt4_7b() -> dict:
    """MiniGPT-4 (Vicuna-7B): as the 13B preset with Vicuna-7B."""
    return {**_minigpt4_13b(), "text_config": vicuna_text_config(4096, 32, 32, 11008)}


@register_preset(ZooInstructBlipConfig, "tiny")
def _instructblip_tiny(**overrides) -> dict:
    """InstructBLIP in miniature: the tiny BLIP-2 layout with an instruction-aware Q-Former and a 2-layer Llama."""
    tokenizer = build_tiny_tokenizer()
    qformer = {**_TINY_QFORMER, "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
               "max_position_embeddings": 512}  # fmt: skip
    return {
        "vision_config": dict(_TINY_BLIP_VISION),
        "qformer_config": qformer,
        "text_config": tiny_llama_text_config(tokenizer),
        "num_query_tokens": 8,
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **overrides,
    }


@register_preset(ZooInstructBlipConfig, "tiny-t5")
def _instructblip_tiny_t5() -> dict:
    """InstructBLIP with a 2+2-layer Flan-T5-style encoder-decoder (head tied to the embeddings, outputs unscaled)."""
    return _instructblip_tiny(text_config=_tiny_t5_config(build_tiny_tokenizer()))


@register_preset(ZooInstructBlipConfig, "instructblip-flan-t5-xl")
def _instructblip_flan_t5_xl() -> dict:
    """InstructBLIP Flan-T5-XL: EVA ViT-g/14, instruction-aware Q-Former, Flan-T5-XL (LM head untied)."""
    return {
        "qformer_config": {"vocab_size": 30523},
        "text_config": _flan_t5(2048, 5120, 24, 32),
        "num_query_tokens": 32,
        "image_token_id": 32100,
        "tie_word_embeddings": False,
    }


@register_preset(ZooInstructBlipConfig, "instructblip-vicuna-7b")
def _instructblip_vicuna_7b() -> dict:
    """InstructBLIP Vicuna-7B: EVA ViT-g/14, instruction-aware Q-Former (BERT vocabulary + [DEC]), Vicuna-7B."""
    return {
        "qformer_config": {"vocab_size": 30523},
        "text_config": {**vicuna_text_config(4096, 32, 32, 11008), "vocab_size": 32001},
        "num_query_tokens": 32,
        "image_token_id": 32000,
    }


__all__ = ["ZooBlip2Config", "ZooInstructBlipConfig", "MINIGPT4_STAGES", "MINIGPT4_LEARNING_RATES"]
