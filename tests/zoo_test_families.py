"""Two small families defined in the tests, proving the skeleton's several-tower hooks (docs/design.md §4, §7).

Importing this module registers them in the family table (``vlmzoo.auto.register_family``) with a ``tiny`` preset
each, so they run through the whole common suite (``test_common.py``) and the bad-input suite
(``test_bad_inputs.py``) like the real families; ``tests/helpers.py`` imports it before it enumerates the cases.

- ``test_two_towers``: a CLIP ViT (``vision_config``, component ``vision_tower``) plus a ConvNeXt
  (``aux_vision_config``, component ``aux_vision_tower``), as LLaVA-HR and Mini-Gemini pair them. The processor
  gives one high-resolution pixel tensor; the model derives the ViT's low-resolution view and the ConvNeXt's view
  from it (``derive_view``: each tower's size, resize and statistics), brings the ConvNeXt's final-stage map to the
  ViT's patch grid and concatenates both along channels (``channel_concat``), then ``mlp2x_gelu`` into the LM.
- ``test_three_experts``: CLIP, SigLIP and ConvNeXt experts in ``vision_configs`` (component ``vision_towers``),
  as EAGLE mixes them: each fed its derived view, every output brought to one grid and channel-concatenated.

Both use ``ZooFixedResImageProcessor`` at the high resolution and a ``ZooLlavaProcessor`` subclass that builds
itself from these configs: the fused grid makes ``fusion_grid ** 2`` tokens per image, one per
``image_size / fusion_grid`` pixel cell of the high-resolution view, which is ``ZooLlavaProcessor``'s count with
that cell as the patch, no extra tokens and the ``"full"`` strategy.
"""

from __future__ import annotations

from typing import ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.modeling_outputs import BaseModelOutputWithPooling

from vlmzoo import ZooVLMConfig, ZooVLMForConditionalGeneration, ZooVLMModel
from vlmzoo.auto import Family, register_family
from vlmzoo.modeling.fusion import build_fusion
from vlmzoo.modeling.modeling_base import ZooPreTrainedModel
from vlmzoo.modeling.projectors import build_projector
from vlmzoo.modeling.vision_towers import (
    ViewSpec,
    build_tower,
    build_vision_towers,
    check_tower_views,
    derive_view,
    tower_extra_tokens,
)
from vlmzoo.presets import IMAGE_TOKEN, build_tiny_tokenizer, register_preset
from vlmzoo import ZooFixedResImageProcessor, ZooLlavaProcessor

TWO_TOWERS, THREE_EXPERTS = "test_two_towers", "test_three_experts"
HIGH_RES, GRID = 64, 4  # the processor's view (px) and the fused token grid (16 image tokens per image)

TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8)  # fmt: skip  # 4x4 patches + CLS
TINY_SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=48,
                   patch_size=16, vision_use_head=False)  # fmt: skip  # 3x3 patches, brought up to 4x4
TINY_CONVNEXT = dict(num_channels=3, patch_size=4, hidden_sizes=[16, 32], depths=[1, 1], num_stages=2,
                     image_size=HIGH_RES)  # fmt: skip  # final stage 32 x 8 x 8 at 64 px, brought down to 4x4

# each tower's normalisation (the processor normalises with CLIP's)
TOWER_STATISTICS = {
    "clip_vision_model": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "siglip_vision_model": ([0.5] * 3, [0.5] * 3),
    "convnext": (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
}
# how each tower's view is resized from the high-resolution pixels (a different mode each, to exercise them)
TOWER_RESIZES = {
    "clip_vision_model": dict(mode="bilinear", antialias=True, align_corners=False),
    "siglip_vision_model": dict(mode="bicubic", antialias=True, align_corners=False),
    "convnext": dict(mode="bilinear", antialias=False, align_corners=True),
}


def default_view(tower_config) -> dict:
    """ViewSpec fields for a tower: its own input size, its resize and its statistics."""
    mean, std = TOWER_STATISTICS[tower_config.model_type]
    return dict(size=tower_config.image_size, **TOWER_RESIZES[tower_config.model_type], mean=list(mean), std=list(std))


def tower_width(tower_config) -> int:
    """Channels of a tower's features: a ViT's width, a ConvNeXt's final stage."""
    sizes = getattr(tower_config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(tower_config.hidden_size)


@strict
class FusedTowersConfig(ZooVLMConfig):
    r"""
    Args:
        image_size: the processor's high-resolution view (px); every tower's view is derived from it.
        image_mean, image_std: the processor's normalisation (the views re-normalise from it).
        tower_views: tower name (``vision_tower``, ``aux_vision_tower`` or an expert's name) -> ``ViewSpec`` fields;
            default: each tower's size, resize and statistics.
        fusion_grid: the grid every branch is brought to (patches per side).
        projector_type: key of the projector registry.
    """

    image_token_id: int = 3  # the tiny tokenizer's <image>
    image_size: int = HIGH_RES
    image_mean: list | None = None
    image_std: list | None = None
    tower_views: dict | None = None
    fusion_grid: int = GRID
    projector_type: str = "mlp2x_gelu"

    def tower_configs(self) -> dict:
        """Tower name -> its config, in the order the model feeds them to the fusion."""
        raise NotImplementedError

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.image_mean = list(self.image_mean if self.image_mean is not None else OPENAI_CLIP_MEAN)
        self.image_std = list(self.image_std if self.image_std is not None else OPENAI_CLIP_STD)
        towers = self.tower_configs()
        if self.tower_views is None:
            self.tower_views = {name: default_view(config) for name, config in towers.items()}
        if sorted(self.tower_views) != sorted(towers):
            raise ValueError(f"tower_views names {sorted(self.tower_views)}, but the towers are {sorted(towers)}")
        for name, spec in self.tower_views.items():
            ViewSpec(**spec)  # ValueError naming a bad mode, size or statistics
        if self.image_size % self.fusion_grid:
            raise ValueError(f"image_size {self.image_size} is not a multiple of fusion_grid {self.fusion_grid}")


@strict
class TwoTowersConfig(FusedTowersConfig):
    model_type = "vlmzoo_test_two_towers"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=TINY_CLIP),
        "aux_vision_config": SubConfigSpec(config_class=AutoConfig, model_type="convnext", init_kwargs=TINY_CONVNEXT),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 512}),
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_tower": ("vision_tower",),
        "aux_vision_tower": ("aux_vision_tower",),
        "multi_modal_projector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }
    default_training_stages: ClassVar[dict[str, list[str]]] = {
        "align": ["multi_modal_projector"],
        "instruct": ["multi_modal_projector", "language_model"],
        "full": ["vision_tower", "aux_vision_tower", "multi_modal_projector", "language_model"],
    }

    def tower_configs(self) -> dict:
        return {"vision_tower": self.vision_config, "aux_vision_tower": self.aux_vision_config}

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        vit_grid = self.vision_config.image_size // self.vision_config.patch_size
        if vit_grid != self.fusion_grid:
            raise ValueError(f"fusion_grid {self.fusion_grid} must be the ViT's patch grid {vit_grid}")


@strict
class ThreeExpertsConfig(FusedTowersConfig):
    model_type = "vlmzoo_test_three_experts"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama", init_kwargs={"vocab_size": 512}),
    }
    vision_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "clip": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=TINY_CLIP),
        "siglip": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model", init_kwargs=TINY_SIGLIP),
        "convnext": SubConfigSpec(config_class=AutoConfig, model_type="convnext", init_kwargs=TINY_CONVNEXT),
    }
    component_table: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision_towers": ("vision_towers",),
        "multi_modal_projector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }
    default_training_stages: ClassVar[dict[str, list[str]]] = {
        "align": ["multi_modal_projector"],
        "instruct": ["multi_modal_projector", "language_model"],
        "full": ["vision_towers", "multi_modal_projector", "language_model"],
    }

    def tower_configs(self) -> dict:
        return dict(self.vision_configs)


# ----- models ---------------------------------------------------------------------------------------------
class FusedTowersModel(ZooVLMModel):
    """Derive each tower's view, run the towers, channel-concatenate on one grid, project."""

    def build_fusion_and_projector(self, config: FusedTowersConfig) -> None:
        self.fusion = build_fusion("channel_concat", target_grid=config.fusion_grid, mode="bilinear", align_corners=True)
        widths = [tower_width(tower) for tower in config.tower_configs().values()]
        self.multi_modal_projector = build_projector(
            config.projector_type, self.fusion.out_features(widths), config.text_config.hidden_size
        )
        self.views = {name: ViewSpec(**spec) for name, spec in config.tower_views.items()}

    def towers(self) -> dict:
        raise NotImplementedError

    def get_image_features(self, pixel_values, **kwargs) -> BaseModelOutputWithPooling:
        """pixel_values: (images, 3, image_size, image_size), normalised as the processor does. ``pooler_output``:
        each image's fusion_grid**2 projected embeddings."""
        config = self.config
        check_tower_views(pixel_values, 3, config.image_size)
        branches = []
        for name, tower in self.towers().items():
            view = derive_view(pixel_values, config.image_mean, config.image_std, self.views[name])
            features = tower(view.to(tower.dtype), return_dict=True).last_hidden_state
            if features.dim() == 3:  # a ViT: (images, extra + patches, width) -> the patch grid
                features = features[:, tower_extra_tokens(tower.config):]
            branches.append(features)  # a ConvNeXt: its final-stage map (images, C, H, W)
        fused = self.fusion(*branches)  # (images, grid * grid, sum of widths)
        projected = self.multi_modal_projector(fused)  # (images, grid * grid, text width)
        return BaseModelOutputWithPooling(last_hidden_state=fused, pooler_output=list(projected))


class TwoTowersPreTrainedModel(ZooPreTrainedModel):
    config_class = TwoTowersConfig


class TwoTowersModel(TwoTowersPreTrainedModel, FusedTowersModel):
    def build_components(self, config: TwoTowersConfig) -> None:
        self.vision_tower = build_tower(config.vision_config)
        self.aux_vision_tower = build_tower(config.aux_vision_config)
        self.build_fusion_and_projector(config)

    def towers(self) -> dict:
        return {"vision_tower": self.vision_tower, "aux_vision_tower": self.aux_vision_tower}


class TwoTowersForConditionalGeneration(TwoTowersPreTrainedModel, ZooVLMForConditionalGeneration):
    base_model_class = TwoTowersModel


class ThreeExpertsPreTrainedModel(ZooPreTrainedModel):
    config_class = ThreeExpertsConfig


class ThreeExpertsModel(ThreeExpertsPreTrainedModel, FusedTowersModel):
    def build_components(self, config: ThreeExpertsConfig) -> None:
        self.vision_towers = build_vision_towers(config.vision_configs)
        self.build_fusion_and_projector(config)

    def towers(self) -> dict:
        return dict(self.vision_towers.items())


class ThreeExpertsForConditionalGeneration(ThreeExpertsPreTrainedModel, ZooVLMForConditionalGeneration):
    base_model_class = ThreeExpertsModel


# ----- processor ------------------------------------------------------------------------------------------
class FusedGridProcessor(ZooLlavaProcessor):
    """``ZooLlavaProcessor`` for the fused-grid families (see the module docstring for the token count)."""

    @classmethod
    def from_model_config(cls, config: FusedTowersConfig, tokenizer) -> "FusedGridProcessor":
        side = config.image_size
        image_processor = ZooFixedResImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side},
            image_mean=list(config.image_mean), image_std=list(config.image_std),
        )  # fmt: skip
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=side // config.fusion_grid,
            vision_feature_select_strategy="full",
            num_additional_image_tokens=0,
            chat_template=tokenizer.chat_template,
            projector_type=config.projector_type,
        )


# ----- presets and registration -------------------------------------------------------------------------------
def tiny_text_config(tokenizer) -> dict:
    return {
        "model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }  # fmt: skip


def _tiny_common() -> dict:
    tokenizer = build_tiny_tokenizer()
    return {"text_config": tiny_text_config(tokenizer), "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)}


@register_preset(TwoTowersConfig, "tiny")
def _two_towers_tiny(**overrides) -> dict:
    """CLIP 32 px / patch 8 + ConvNeXt at 64 px (2 stages), channel-concatenated on the 4x4 ViT grid."""
    return {
        **_tiny_common(),
        "vision_config": {"model_type": "clip_vision_model", **TINY_CLIP},
        "aux_vision_config": {"model_type": "convnext", **TINY_CONVNEXT},
        **overrides,
    }


@register_preset(ThreeExpertsConfig, "tiny")
def _three_experts_tiny(**overrides) -> dict:
    """CLIP (32 px), SigLIP (48 px), ConvNeXt (64 px) experts, channel-concatenated on a 4x4 grid."""
    return {
        **_tiny_common(),
        "vision_configs": {
            "clip": {"model_type": "clip_vision_model", **TINY_CLIP},
            "siglip": {"model_type": "siglip_vision_model", **TINY_SIGLIP},
            "convnext": {"model_type": "convnext", **TINY_CONVNEXT},
        },
        **overrides,
    }


for _key, _config, _model, _generation in (
    (TWO_TOWERS, TwoTowersConfig, TwoTowersModel, TwoTowersForConditionalGeneration),
    (THREE_EXPERTS, ThreeExpertsConfig, ThreeExpertsModel, ThreeExpertsForConditionalGeneration),
):
    register_family(Family(
        key=_key, config_class=_config, model_class=_model, for_generation_class=_generation,
        processor_class=FusedGridProcessor, image_processor_classes=(ZooFixedResImageProcessor,),
    ))  # fmt: skip
