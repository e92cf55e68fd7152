"""The LLaVA family: LLaVA 1.0 (linear projector), 1.5 (mlp2x_gelu) and 1.6 / NeXT (AnyRes).

Liu et al., "Visual Instruction Tuning" (2023), "Improved Baselines with Visual Instruction Tuning" (2023)
and LLaVA-NeXT (2024). A prefix VLM: vision tower -> projector -> language model. With AnyRes, every image
arrives as a base view plus a grid of tiles; tile features are laid out spatially, un-padded back to the
image's aspect ratio and followed by a learned ``image_newline`` vector at the end of every row.
Numerically this matches transformers' ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin
from transformers.cache_utils import Cache

from ..configuration.configuration_llava import ZooLlavaConfig
from ..processing.image_transforms import anyres_grid_shape, anyres_num_views, unpadded_region
from .modeling_base import (
    ZooCausalLMHeadMixin,
    ZooCausalLMOutputWithPast,
    ZooModelOutputWithPast,
    ZooPreTrainedModel,
    image_token_mask,
    place_image_features,
)
from .projectors import ImageNewline, build_projector
from .vision_towers import build_vision_tower, check_tower_views, num_feature_layers, run_vision_tower


class ZooLlavaPreTrainedModel(ZooPreTrainedModel):
    config: ZooLlavaConfig
    config_class = ZooLlavaConfig


class ZooLlavaModel(ZooLlavaPreTrainedModel):
    """Vision tower + projector + base language model (no LM head)."""

    def __init__(self, config: ZooLlavaConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.multi_modal_projector = build_projector(
            config.projector_type,
            config.vision_config.hidden_size * num_feature_layers(config.vision_feature_layer),
            config.text_config.hidden_size,
            bias=config.multimodal_projector_bias,
        )
        self.image_newline = ImageNewline(config.text_config.hidden_size) if config.uses_anyres else None
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def stage_component_modules(self) -> dict[str, list]:
        return {
            "vision_tower": [self.vision_tower],
            "multi_modal_projector": [self.multi_modal_projector, self.image_newline],
            "language_model": [self.language_model],
        }

    # ----- images -------------------------------------------------------------------------------------
    def get_image_features(
        self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs
    ) -> torch.Tensor:
        """Projected visual embeddings of all images, concatenated: (total image tokens, text hidden size).

        Fixed resolution: ``pixel_values`` is (num_images, 3, H, W). AnyRes: (num_images, max_views, 3, H, W)
        with ``image_sizes`` (num_images, 2) giving each image's original (height, width).
        """
        config = self.config
        if config.uses_anyres:
            return self._anyres_image_features(pixel_values, image_sizes)
        check_tower_views(pixel_values, config.vision_config.num_channels, config.vision_config.image_size)
        features = run_vision_tower(
            self.vision_tower, pixel_values, config.vision_feature_layer, config.vision_feature_select_strategy
        )
        # (num_images, tokens, vision width * layers) -> (num_images * tokens, text width)
        return self.multi_modal_projector(features).flatten(0, 1)

    def _anyres_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
        config = self.config
        tile_size = config.vision_config.image_size
        if image_sizes is None:
            raise ValueError("AnyRes models need `image_sizes` (num_images, 2) next to pixel_values")
        if pixel_values.dim() != 5 or pixel_values.shape[0] != len(image_sizes):
            raise ValueError(
                f"pixel_values must be (num_images, max_views, 3, {tile_size}, {tile_size}) with one row per entry "
                f"of image_sizes ({len(image_sizes)}), got shape {tuple(pixel_values.shape)}"
            )
        sizes = [tuple(int(side) for side in size) for size in torch.as_tensor(image_sizes).tolist()]
        views_per_image = [anyres_num_views(size, config.image_grid_pinpoints, tile_size) for size in sizes]
        if max(views_per_image) > pixel_values.shape[1]:
            raise ValueError(
                f"image_sizes ask for up to {max(views_per_image)} views per image but pixel_values holds "
                f"{pixel_values.shape[1]}; were the pixels made with other image_grid_pinpoints?"
            )
        # (num_images, max_views, 3, H, W) -> (total real views, 3, H, W)
        views = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, views_per_image)], dim=0)
        check_tower_views(views, config.vision_config.num_channels, tile_size)
        features = run_vision_tower(
            self.vision_tower, views, config.vision_feature_layer, config.vision_feature_select_strategy
        )
        features = self.multi_modal_projector(features)
        packed = [
            self._pack_anyres_image(image_views, size)
            for image_views, size in zip(torch.split(features, views_per_image), sizes)
        ]
        return torch.cat(packed, dim=0)

    def _pack_anyres_image(self, view_features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Base view tokens, then the un-padded tile grid in raster order with a newline after each row.

        view_features: (1 + rows * cols, tokens per view, hidden).
        """
        config = self.config
        base, tiles = view_features[0], view_features[1:]
        if tiles.shape[0] == 0:
            return torch.cat([base, self.image_newline(1, base)[0]], dim=0)
        tile_size = config.vision_config.image_size
        side = tile_size // config.vision_config.patch_size
        rows, columns = anyres_grid_shape(image_size, config.image_grid_pinpoints, tile_size)
        if tiles.shape[1] != side * side:
            raise ValueError(
                f"AnyRes tiles give {tiles.shape[1]} tokens each, expected a {side}x{side} grid; use "
                f"vision_feature_select_strategy='default' for towers with a CLS token"
            )
        hidden = tiles.shape[-1]
        # (rows*cols, side*side, hidden) -> (rows, cols, side, side, hidden) -> (rows*side, cols*side, hidden)
        grid = tiles.view(rows, columns, side, side, hidden).permute(0, 2, 1, 3, 4).reshape(rows * side, columns * side, hidden)
        top, height, left, width = unpadded_region(image_size, (rows * side, columns * side))
        grid = grid[top : top + height, left : left + width]
        # append the newline vector as an extra column: (height, width + 1, hidden) -> (height * (width + 1), hidden)
        newline = self.image_newline(height, grid)  # (height, 1, hidden)
        grid = torch.cat([grid, newline], dim=1).flatten(0, 1)
        return torch.cat([base, grid], dim=0)

    # ----- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> ZooModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        image_features = None
        if pixel_values is not None and pixel_values.numel() > 0:
            image_features = self.get_image_features(pixel_values, image_sizes=image_sizes)
            mask = image_token_mask(input_ids, inputs_embeds, self.config.image_token_id, self.get_input_embeddings())
            inputs_embeds = place_image_features(inputs_embeds, mask, image_features)
        elif input_ids is not None and past_key_values is None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(
                "input_ids contain image tokens but no pixel_values were given; pass the images the processor made"
            )

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        return ZooModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


class ZooLlavaForConditionalGeneration(ZooCausalLMHeadMixin, ZooLlavaPreTrainedModel, GenerationMixin):
    """LLaVA with its LM head: ``AutoModelForImageTextToText`` loads it."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config: ZooLlavaConfig):
        super().__init__(config)
        self.model = ZooLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    # stable component names (DESIGN.md §4)
    @property
    def vision_tower(self) -> nn.Module:
        return self.model.vision_tower

    @property
    def multi_modal_projector(self) -> nn.Module:
        return self.model.multi_modal_projector

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    def stage_component_modules(self) -> dict[str, list]:
        components = self.model.stage_component_modules()
        components["language_model"] = components["language_model"] + [self.lm_head]
        return components

    def get_image_features(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None, **kwargs):
        return self.model.get_image_features(pixel_values, image_sizes=image_sizes)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> ZooCausalLMOutputWithPast:
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            image_sizes=image_sizes,
            **kwargs,
        )
        return self._lm_head_output(outputs, labels, logits_to_keep, **kwargs)


__all__ = ["ZooLlavaPreTrainedModel", "ZooLlavaModel", "ZooLlavaForConditionalGeneration"]
