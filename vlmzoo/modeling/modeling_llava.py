"""The LLaVA family: LLaVA 1.0 (linear projector), 1.5 (mlp2x_gelu) and 1.6 / NeXT (AnyRes).

Liu et al., "Visual Instruction Tuning" (2023), "Improved Baselines with Visual Instruction Tuning" (2023)
and LLaVA-NeXT (2024). A prefix VLM: vision tower -> projector -> language model, on the generic pair of
``modeling_base``. This file holds only LLaVA's feature path: with AnyRes, every image arrives as a base
view plus a grid of tiles; tile features are laid out spatially, un-padded back to the image's aspect
ratio and followed by a learned ``image_newline`` vector at the end of every row.
Numerically this matches transformers' ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``.
"""

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from ..configuration.configuration_llava import ZooLlavaConfig
# transformers' own AnyRes geometry (the reference's); the processors count with the torch-free twin in
# processing/image_transforms.py, and tests check that both agree for many image sizes
from transformers.models.llava_next.modeling_llava_next import (
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
    unpad_image,
)
from .input_checks import check_image_sizes
from .docstrings import (
    KWARGS_DOC,
    LM_HEAD_INPUTS_DOC,
    MM_ENCODER_OUTPUTS_DOC,
    MODEL_INPUTS_DOC,
    forward_docstring,
)
from .modeling_base import (
    ZooPreTrainedModel,
    ZooVLMForConditionalGeneration,
    ZooVLMModel,
    given,
)
from .outputs import ZooVLMCausalLMOutputWithPast, ZooVLMModelOutputWithPast
from .blocks import ImageNewline
from .projectors import build_projector
from .vision_towers import (
    build_vision_tower,
    check_tower_views,
    floating_dtype,
    num_feature_layers,
    select_vision_features,
)


# LLaVA's own inputs, documented in both forwards
LLAVA_INPUTS_DOC = """
        vision_feature_layer (`int` or `list[int]`, *optional*):
            Per-call override of `config.vision_feature_layer`: the tower's hidden state(s) the projector reads
            (a list is concatenated on channels).
        vision_feature_select_strategy (`str`, *optional*):
            Per-call override of `config.vision_feature_select_strategy` (`"default"` drops the CLS token, `"full"`
            keeps it).
        image_sizes (`torch.LongTensor` of shape `(num_images, 2)`, *optional*):
            Each image's original (height, width), from the processor; needed with AnyRes (LLaVA-NeXT), where
            `pixel_values` is `(num_images, max_views, 3, H, W)`."""


class ZooLlavaPreTrainedModel(ZooPreTrainedModel):
    config: ZooLlavaConfig
    config_class = ZooLlavaConfig


class ZooLlavaModel(ZooLlavaPreTrainedModel, ZooVLMModel):
    """Vision tower + projector (+ AnyRes newline) + base language model (no LM head)."""

    family_input_names = ("image_sizes", "vision_feature_layer", "vision_feature_select_strategy")
    family_input_checks = {"image_sizes": check_image_sizes}
    # the original LLaVA code marks an image with IMAGE_TOKEN_INDEX = -200 (llava/constants.py) in input_ids
    token_hints = {
        -200: "-200 is the original LLaVA code's IMAGE_TOKEN_INDEX: vlmzoo marks images with the tokenizer's image "
        "token (id {image_token_id}), expanded to one token per visual embedding; build the inputs with vlmzoo's "
        "processor instead of the original repository's tokenizer_image_token."
    }

    def build_components(self, config: ZooLlavaConfig) -> None:
        self.vision_tower = build_vision_tower(config.vision_config)
        self.multi_modal_projector = build_projector(
            config.projector_type,
            config.vision_config.hidden_size * num_feature_layers(config.vision_feature_layer),
            config.text_config.hidden_size,
            bias=config.multimodal_projector_bias,
            **(config.projector_config or {}),
        )
        self.image_newline = ImageNewline(config.text_config.hidden_size) if config.uses_anyres else None
        # the views the tower was built for, (channels, side): read on every image call, where config reads cost ~1 us
        self.tower_view = (config.vision_config.num_channels, config.vision_config.image_size)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "LLaVA's base model (no LM head): the tower, the projector (and AnyRes layout), then the language model.",
        MODEL_INPUTS_DOC, LLAVA_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMModelOutputWithPast` (`last_hidden_state`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.LongTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast:
        family_inputs = given(
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
        )
        return self.multimodal_forward(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, {"pixel_values": pixel_values},
            family_inputs, mm_encoder_outputs, kwargs,
        )  # fmt: skip

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """Run the tower and the projector; ``pooler_output`` is the list of each image's embeddings.

        Fixed resolution: ``pixel_values`` is (num_images, 3, H, W). AnyRes: (num_images, max_views, 3, H, W)
        with ``image_sizes`` (num_images, 2) giving each image's original (height, width).
        """
        views, views_per_image, sizes = pixel_values, None, None
        anyres = self.image_newline is not None  # AnyRes models have the newline (config.uses_anyres)
        if anyres:
            views, views_per_image, sizes = self._anyres_views(pixel_values, image_sizes)
        check_tower_views(views, *self.tower_view)
        tower_outputs = self.vision_tower(views.to(floating_dtype(self.vision_tower)), return_dict=True, **kwargs)
        selected = select_vision_features(
            tower_outputs.hidden_states, vision_feature_layer, vision_feature_select_strategy
        )
        features = self.multi_modal_projector(selected)  # (views, tokens, text width)
        if anyres:
            per_image = [
                self._pack_anyres_image(image_views, size)
                for image_views, size in zip(torch.split(features, views_per_image), sizes)
            ]
        else:
            per_image = list(features)
        # the tower's own output with the per-image embeddings as its pooler_output, as transformers' LLaVA returns
        tower_outputs.pooler_output = per_image
        return tower_outputs

    def _anyres_views(self, pixel_values: torch.Tensor, image_sizes) -> tuple[torch.Tensor, list[int], list]:
        """The real views of every image, concatenated, with each image's view count and (height, width)."""
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
        views_per_image = [image_size_to_num_patches(size, config.image_grid_pinpoints, tile_size) for size in sizes]
        if max(views_per_image) > pixel_values.shape[1]:
            raise ValueError(
                f"image_sizes ask for up to {max(views_per_image)} views per image but pixel_values holds "
                f"{pixel_values.shape[1]}; were the pixels made with other image_grid_pinpoints?"
            )
        # (num_images, max_views, 3, H, W) -> (total real views, 3, H, W)
        views = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, views_per_image)], dim=0)
        return views, views_per_image, sizes

    def _pack_anyres_image(self, view_features: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Base view tokens, then the un-padded tile grid in raster order with a newline after each row.

        view_features: (1 + rows * cols, tokens per view, hidden); every image has at least one tile.
        """
        config = self.config
        base, tiles = view_features[0], view_features[1:]
        tile_size = config.vision_config.image_size
        side = tile_size // config.vision_config.patch_size
        rows, columns = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, tile_size)
        if tiles.shape[1] != side * side:
            raise ValueError(
                f"AnyRes tiles give {tiles.shape[1]} tokens each, expected a {side}x{side} grid; use "
                f"vision_feature_select_strategy='default' for towers with a CLS token"
            )
        hidden = tiles.shape[-1]
        # (rows*cols, side*side, hidden) -> (rows, cols, side, side, hidden) -> (rows*side, cols*side, hidden)
        grid = tiles.view(rows, columns, side, side, hidden).permute(0, 2, 1, 3, 4).reshape(rows * side, columns * side, hidden)
        # spatial unpad on (hidden, rows*side, cols*side), then back: -> (height, width, hidden)
        grid = unpad_image(grid.permute(2, 0, 1), image_size).permute(1, 2, 0)
        height = grid.shape[0]
        # append the newline vector as an extra column: (height, width + 1, hidden) -> (height * (width + 1), hidden)
        newline = self.image_newline(height, grid)  # (height, 1, hidden)
        grid = torch.cat([grid, newline], dim=1).flatten(0, 1)
        return torch.cat([base, grid], dim=0)


class ZooLlavaForConditionalGeneration(ZooLlavaPreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin):
    """LLaVA with its LM head: ``AutoModelForImageTextToText`` loads it."""

    base_model_class = ZooLlavaModel

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "LLaVA with its LM head: logits over the vocabulary and, with `labels`, the loss.",
        MODEL_INPUTS_DOC, LLAVA_INPUTS_DOC, LM_HEAD_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMCausalLMOutputWithPast` (`loss`, `logits`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.LongTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast:
        model_inputs = dict(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes,
            use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs,
        )  # fmt: skip
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


__all__ = ["ZooLlavaPreTrainedModel", "ZooLlavaModel", "ZooLlavaForConditionalGeneration"]
