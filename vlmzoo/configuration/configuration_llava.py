# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""Configuration of the LLaVA family: LLaVA 1.0 (linear), 1.5 (mlp2x_gelu) and 1.6 / NeXT (AnyRes).

Follows the LLaVA papers (Liu et al. 2023, 2024) and the field names of transformers' ``LlavaConfig`` /
``LlavaNextConfig`` where they mean the same thing, so converted configs read naturally.
``image_grid_pinpoints=None`` is fixed-resolution LLaVA; a list of ``[height, width]`` pinpoints turns
on AnyRes tiling with spatial unpad and the learned ``image_newline`` (LLaVA-NeXT).
"""

from __future__ import annotations

from typing import ClassVar, Literal

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
from .configuration_base import ZooVLMConfig


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
    vision_feature_select_strategy: Literal["default", "full"] = "default"
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


__all__ = ["ZooLlavaConfig"]
