# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the LLaVA family: LLaVA 1.0 (linear), 1.5 (mlp2x_gelu) and 1.6 / NeXT (AnyRes).

Follows the LLaVA papers (Liu et al. 2023, 2024) and the field names of transformers' ``LlavaConfig`` /
``LlavaNextConfig`` where they mean the same thing, so converted configs read naturally.
``image_grid_pinpoints=None`` is fixed-resolution LLaVA; a list of ``[height, width]`` pinpoints turns
on AnyRes tiling with spatial unpad and the learned ``image_newline`` (LLaVA-NeXT).

Also the family's presets (``vlmzoo.presets.get_config("llava", name)``: ``tiny`` ones built offline and the
papers' sizes), its demo settings (``ZooLlavaConfig.demo_overrides``) and the Llama / Vicuna text configs the
presets use, which other families' presets reuse (``tiny_llama_text_config``, ``vicuna_text_config``).
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec

from ..geometry import (
    PROJECTOR_TOKENS,
    projector_keeps_grid,
    projector_num_tokens,
    projector_options,
    tokens_per_view,
    tower_extra_tokens,
    validate_grid_pinpoints,
)
from ..presets import register_preset
from ..tiny_tokenizer import IMAGE_TOKEN, build_tiny_tokenizer
from .configuration_base import ZooVLMConfig
from .validation import check_positive


# OpenAI CLIP ViT-L/14 at 336 px, LLaVA 1.5's and NeXT's tower (the default vision_config)
CLIP_VIT_L_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
}


@strict
class ZooLlavaConfig(ZooVLMConfig):
    r"""
    Args:
        vision_config: any transformers vision model config (CLIP, SigLIP, ...); default CLIP ViT-L/14-336.
        text_config: any decoder-only LM config (Llama, Qwen2, Mistral, ...); default Llama.
        image_token_id: id of the ``<image>`` placeholder in the tokenizer.
        projector_type: key of the projector registry (``linear`` for LLaVA 1.0, ``mlp2x_gelu`` for 1.5; also
            ``ln_mlp``, ``pixel_shuffle``, ``c_abstractor``, ``ldp``, ``perceiver``).
        projector_config: the projector's options, e.g. ``{"ratio": 2}`` for ``pixel_shuffle`` (``None``: defaults;
            valid names and token counts in ``vlmzoo.geometry``). Projectors that change the token grid
            need fixed resolution.
        multimodal_projector_bias: whether the projector's linear layers have a bias.
        vision_feature_layer: hidden-state index (or list of indices, concatenated on channels) of the tower.
        vision_feature_select_strategy: ``"default"`` drops the first (CLS) token, ``"full"`` keeps all.
        image_grid_pinpoints: ``None`` for fixed resolution, else the AnyRes ``[height, width]`` grid list.
        image_seq_length: image tokens of one view at the tower's resolution, after feature selection and the
            projector; computed when not given, and a given value that disagrees is refused.
        training_stages: stage name -> trained components (defaults: the LLaVA recipe).
    """

    model_type = "vlmzoo_llava"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs=CLIP_VIT_L_336,
        ),
        # Vicuna's 32000 tokens + LLaVA's <image> and padding, as llava-1.5 checkpoints have (image_token_id 32000)
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32064}),
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_tower": ("vision_tower",),
        "multi_modal_projector": ("multi_modal_projector", "image_newline"),
        "language_model": ("language_model",),
    }
    # LLaVA recipe: stage 1 projector only (lr 1e-3); stage 2 projector + LLM (lr 2e-5)
    default_training_stages: ClassVar[dict[str, list[str]]] = {
        "align": ["multi_modal_projector"],
        "instruct": ["multi_modal_projector", "language_model"],
        "full": ["vision_tower", "multi_modal_projector", "language_model"],
    }
    default_learning_rates: ClassVar[dict[str, float]] = {"align": 1e-3, "instruct": 2e-5, "full": 2e-5}

    projector_type: str = "mlp2x_gelu"
    projector_config: dict | None = None
    multimodal_projector_bias: bool = True
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"  # a key of geometry's strategies (checked, listing them)
    image_grid_pinpoints: list | None = None
    image_seq_length: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.image_grid_pinpoints is not None:
            validate_grid_pinpoints(self.image_grid_pinpoints, self.vision_config.image_size)
        self._check_projector()
        self._check_image_seq_length()

    def _check_image_seq_length(self) -> None:
        """Tokens of one view from the tower's facts, the feature selection and the projector (what the processor
        expands each fixed-resolution image to); ``image_seq_length`` must agree with it."""
        vision = self.vision_config
        selected = tokens_per_view(
            vision.image_size, vision.image_size, vision.patch_size, tower_extra_tokens(vision),
            self.vision_feature_select_strategy,
        )  # fmt: skip
        tokens = projector_num_tokens(self.projector_type, selected, self.projector_config)
        check_positive(type(self).__name__, "image_seq_length", self.image_seq_length, allow_none=True)
        if self.image_seq_length is None:
            self.image_seq_length = tokens
        elif self.image_seq_length != tokens:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} disagrees with the {tokens} tokens one view makes (tower "
                f"{vision.image_size}px / patch {vision.patch_size}, strategy '{self.vision_feature_select_strategy}', "
                f"projector '{self.projector_type}'); leave image_seq_length unset to have it computed"
            )

    def _check_projector(self) -> None:
        """Known projector and options; AnyRes only with grid-keeping projectors; the patch grid fits the projector."""
        projector_options(self.projector_type, self.projector_config)  # ValueError names the valid keys / options
        if self.uses_anyres and not projector_keeps_grid(self.projector_type):
            keeping = [key for key in PROJECTOR_TOKENS if projector_keeps_grid(key)]
            raise ValueError(
                f"projector '{self.projector_type}' changes the token grid, but AnyRes (image_grid_pinpoints) lays "
                f"tile features out on the tower's patch grid; use fixed resolution (image_grid_pinpoints=None) or a "
                f"grid-keeping projector: {keeping}"
            )
        image_size = getattr(self.vision_config, "image_size", None)
        patch_size = getattr(self.vision_config, "patch_size", None)
        if isinstance(image_size, int) and isinstance(patch_size, int) and patch_size > 0:
            try:
                projector_num_tokens(self.projector_type, (image_size // patch_size) ** 2, self.projector_config)
            except ValueError as error:
                raise ValueError(f"vision_config image_size {image_size} / patch_size {patch_size}: {error}") from None

    @property
    def uses_anyres(self) -> bool:
        return self.image_grid_pinpoints is not None

    def demo_overrides(self) -> tuple[dict, str]:
        """``vlmzoo demo``: a 256-wide vision tower (the frozen random tower keeps more of each patch)."""
        vision = self.vision_config.to_dict()
        vision.update(hidden_size=256, intermediate_size=512)
        why = (
            "with one demo override: vision tower width 256 (preset: 64).\n"
            "  The tower stays frozen and random; a wider patch embedding keeps more of each 16x16x3 patch,\n"
            "  which the shape questions need (still 16 image tokens)."
        )
        return {"vision_config": vision}, why


# ----- presets ------------------------------------------------------------------------------------------
def tiny_llama_text_config(tokenizer) -> dict:
    """A 2-layer Llama (width 64, grouped-query attention) on ``tokenizer``'s vocabulary and special tokens."""
    return {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def vicuna_text_config(hidden: int, layers: int, heads: int, intermediate: int) -> dict:
    """Vicuna v1.5 (a Llama-2 fine-tune) with LLaVA's padded vocabulary (32000 + ``<image>`` + padding)."""
    return {
        "model_type": "llama",
        "vocab_size": 32064,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "pad_token_id": 0,
    }


TINY_CLIP = {
    "model_type": "clip_vision_model",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "image_size": 64,
    "patch_size": 16,
    "projection_dim": 64,
}


@register_preset(ZooLlavaConfig, "tiny")
def _llava_tiny(**overrides) -> dict:
    """LLaVA 1.5 in miniature: CLIP 64 px / patch 16 (16 tokens), mlp2x_gelu, a 2-layer Llama."""
    tokenizer = build_tiny_tokenizer()
    return {
        "vision_config": dict(TINY_CLIP),
        "text_config": tiny_llama_text_config(tokenizer),
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "projector_type": "mlp2x_gelu",
        **overrides,
    }


@register_preset(ZooLlavaConfig, "tiny-linear")
def _llava_tiny_linear() -> dict:
    """LLaVA 1.0 in miniature: linear projector."""
    return _llava_tiny(projector_type="linear")


@register_preset(ZooLlavaConfig, "tiny-anyres")
def _llava_tiny_anyres() -> dict:
    """LLaVA-NeXT in miniature: AnyRes over 64 px tiles."""
    return _llava_tiny(image_grid_pinpoints=[[64, 128], [128, 64], [128, 128], [192, 64], [64, 192]])


def _clip_large_336() -> dict:
    return {"model_type": "clip_vision_model", **CLIP_VIT_L_336}


@register_preset(ZooLlavaConfig, "llava-1.5-7b")
def _llava_15_7b() -> dict:
    """LLaVA-1.5-7B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-7B (576 image tokens)."""
    return {
        "vision_config": _clip_large_336(),
        "text_config": vicuna_text_config(4096, 32, 32, 11008),
        "image_token_id": 32000,
    }


@register_preset(ZooLlavaConfig, "llava-1.5-13b")
def _llava_15_13b() -> dict:
    """LLaVA-1.5-13B: CLIP ViT-L/14-336 + mlp2x_gelu + Vicuna-13B."""
    return {
        "vision_config": _clip_large_336(),
        "text_config": vicuna_text_config(5120, 40, 40, 13824),
        "image_token_id": 32000,
    }


@register_preset(ZooLlavaConfig, "llava-next-7b")
def _llava_next_7b() -> dict:
    """LLaVA-NeXT (1.6) Vicuna-7B: AnyRes up to 672x672 / 1008x336, spatial unpad, image newline."""
    return {
        "vision_config": _clip_large_336(),
        "text_config": vicuna_text_config(4096, 32, 32, 11008),
        "image_token_id": 32000,
        "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    }


__all__ = ["ZooLlavaConfig", "tiny_llama_text_config", "vicuna_text_config"]
