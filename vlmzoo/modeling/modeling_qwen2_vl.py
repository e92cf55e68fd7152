"""The Qwen2-VL family: naive dynamic resolution, the 2x2 patch merger and M-RoPE, for images and videos.

Wang et al. 2024, "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution"
(arXiv:2409.12191), §2.1. On the generic pair of ``modeling_base``, this file holds only what is Qwen2-VL's:

- the native-resolution ViT is transformers' own (``Qwen2VisionTransformerPretrainedModel``: 2-D rotary positions,
  no absolute position table, every image and frame of a call packed into one sequence with block-diagonal
  attention: varlen flash-attention when the backend is flash, one attention call per image on sdpa / eager, so no
  image's tokens attend to another's). Its patch merger (LayerNorm, 2x2 group, MLP to the LLM width) is taken out
  of it and is this family's ``multi_modal_projector`` (docs/design.md §4): freezing the tower leaves it training;
- M-RoPE in any rotary decoder through ``rope.swap_in_mrope``, with the (3, B, L) position index of
  ``rope.mrope_position_index`` and the ``rope_deltas`` kept on the model across decode steps, as transformers'
  ``Qwen2VLModel`` keeps them (``get_rope_index`` has its signature);
- pixels as the processor packs them: ``pixel_values`` (all images' patches, (patches, C * T * P * P), in 2x2
  merge-block order) with ``image_grid_thw`` (images, 3), and the same for videos.

Numerically this matches transformers' ``Qwen2VLForConditionalGeneration`` on converted weights (its text model is a
Qwen2 decoder with M-RoPE built in; here the plain Qwen2 decoder with M-RoPE swapped in).
"""

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_qwen2_vl import ZooQwen2VLConfig
from .docstrings import KWARGS_DOC, LM_HEAD_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, MODEL_INPUTS_DOC, forward_docstring
from .modeling_base import ZooPreTrainedModel, ZooVLMForConditionalGeneration, ZooVLMModel, given
from .outputs import ZooVLMCausalLMOutputWithPast, ZooVLMModelOutputWithPast
from .rope import merged_grids, mrope_decode_positions, mrope_position_index, swap_in_mrope
from .vision_towers import floating_dtype

QWEN2_VL_INPUTS_DOC = """
        pixel_values_videos (`torch.FloatTensor` of shape `(video_patches, channels * temporal_patch_size * patch_size ** 2)`, *optional*):
            Every video's patches, as the processor packs them (pairs of frames form one temporal patch).
        image_grid_thw (`torch.LongTensor` of shape `(num_images, 3)`, *optional*):
            Each image's patch grid (t, h, w); needed with `pixel_values`, which are then `(sum of t*h*w, C*T*P*P)`.
        video_grid_thw (`torch.LongTensor` of shape `(num_videos, 3)`, *optional*):
            Each video's patch grid (t, h, w); needed with `pixel_values_videos`.
        mm_token_type_ids (`torch.IntTensor` of shape `(batch_size, sequence_length)`, *optional*):
            The processor's modality of each token (0 text, 1 image, 2 video). Accepted as transformers' Qwen2-VL
            takes it, and not read: the positions come from the placeholder ids, which mark the same tokens."""


def _check_patches(name: str, pixels: torch.Tensor, grid_name: str, grid, patch_values: int) -> None:
    """Packed patches ((patches, patch_values)) with their grid: ``ValueError`` naming what is missing or wrong."""
    if grid is None:
        raise ValueError(
            f"{name} were given without {grid_name}: pass the (t, h, w) patch grid of each "
            f"{'video' if 'video' in name else 'image'} (the processor returns it)"
        )
    if pixels.dim() != 2 or pixels.shape[-1] != patch_values:
        raise ValueError(
            f"{name} must be (patches, {patch_values}) flattened patches as the processor packs them (channels x "
            f"temporal_patch_size x patch_size^2 values each), got shape {tuple(pixels.shape)}"
        )


class ZooQwen2VLPreTrainedModel(ZooPreTrainedModel):
    config: ZooQwen2VLConfig
    config_class = ZooQwen2VLConfig
    input_modalities = ("image", "video", "text")
    _no_split_modules = ["Qwen2VLVisionBlock"]


class ZooQwen2VLModel(ZooQwen2VLPreTrainedModel, ZooVLMModel):
    """Native-resolution ViT + patch merger + a decoder with M-RoPE (no LM head)."""

    modality_pixel_inputs = {"image": "pixel_values", "video": "pixel_values_videos"}
    family_input_names = ("image_grid_thw", "video_grid_thw", "mm_token_type_ids")

    def build_components(self, config: ZooQwen2VLConfig) -> None:
        vision = config.vision_config
        tower = Qwen2VisionTransformerPretrainedModel._from_config(vision)
        # transformers' merger becomes the projector; the tower ends at its last block: (patches, embed_dim)
        self.multi_modal_projector = tower.merger
        tower.merger = nn.Identity()
        self.vision_tower = tower
        self.spatial_merge_size = vision.spatial_merge_size
        self.patch_values = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
        self.rope_deltas = None  # (B, 1), set by each prefill, read by decode steps

    def build_language_model(self, text_config):
        language_model = super().build_language_model(text_config)
        swap_in_mrope(language_model, self.config.mrope_section)
        return language_model

    @property
    def visual(self) -> nn.Module:
        """transformers' name of the vision tower (without the merger here: that is ``multi_modal_projector``)."""
        return self.vision_tower

    # ----- features ------------------------------------------------------------------------------------
    def _encode(self, name: str, pixels: torch.Tensor, grid_name: str, grid, kwargs: dict) -> BaseModelOutputWithPooling:
        # the family's other inputs may come along (a processor's whole batch): they are not the tower's
        for other in ("mm_token_type_ids", "image_grid_thw", "video_grid_thw"):
            kwargs.pop(other, None)
        _check_patches(name, pixels, grid_name, grid, self.patch_values)
        # the grids checked on one host read (transformers reads them too, for the split), as the positions read them
        merged = merged_grids(grid_name.split("_")[0], grid, self.spatial_merge_size)
        tokens = [frames * height * width for frames, height, width in merged]  # merged tokens of each image / video
        patches = sum(tokens) * self.spatial_merge_size**2
        if patches != pixels.shape[0]:
            raise ValueError(
                f"{grid_name} {grid.tolist()} gives {patches} patches (t*h*w each) but {name} holds {pixels.shape[0]}: "
                f"pass the grids the processor returned with these pixels"
            )
        grid = grid.to(pixels.device)
        outputs = self.vision_tower(pixels.to(floating_dtype(self.vision_tower)), grid_thw=grid, return_dict=True, **kwargs)
        # (patches, embed_dim) -> (patches / merge^2, text width): the merger groups each 2x2 block of patches
        features = self.multi_modal_projector(outputs.last_hidden_state)
        outputs.pooler_output = torch.split(features, tokens)
        return outputs

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        image_grid_thw: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """The ViT over every image's patches (packed, block-diagonal), then the merger; ``pooler_output`` holds each
        image's (t*h*w / merge^2, text width) embeddings, ``last_hidden_state`` the ViT's (patches, embed_dim)."""
        return self._encode("pixel_values", pixel_values, "image_grid_thw", image_grid_thw, kwargs)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.FloatTensor,
        video_grid_thw: torch.LongTensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithPooling:
        """As ``get_image_features``, for videos (``pooler_output``: each video's embeddings)."""
        return self._encode("pixel_values_videos", pixel_values_videos, "video_grid_thw", video_grid_thw, kwargs)

    # ----- positions -----------------------------------------------------------------------------------
    def get_rope_index(
        self,
        input_ids: torch.LongTensor,
        mm_token_type_ids: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """M-RoPE's (3, B, L) positions of a prompt and its (B, 1) ``rope_deltas`` (transformers' signature).

        The blocks are found by their placeholder ids (``mm_token_type_ids`` is taken for transformers' signature and
        not read: the processor marks the same tokens).
        """
        config = self.config
        return mrope_position_index(
            input_ids, attention_mask, config.image_token_id, config.video_token_id,
            image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, spatial_merge_size=self.spatial_merge_size,
            temporal_advance=config.mrope_temporal_advance,
        )  # fmt: skip

    def packing_position_ids(
        self, input_ids, attention_mask, image_grid_thw=None, video_grid_thw=None, **family_inputs
    ) -> torch.LongTensor:
        """Each sample's (3, B, L) M-RoPE prefill positions in a right-padded batch (what a padding-free batch
        restarts per sample, ``ZooVLMModel.packing_position_ids``)."""
        positions, _ = self.get_rope_index(input_ids, None, image_grid_thw, video_grid_thw, attention_mask)
        return positions

    def compute_position_ids(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache,
        image_grid_thw=None, video_grid_thw=None, mm_token_type_ids=None, **family_inputs,
    ):  # fmt: skip
        """M-RoPE positions as transformers' Qwen2-VL derives them: a prompt with media gets the position index (and
        sets ``rope_deltas``); later steps (a cache, or embeddings without ids) continue from ``rope_deltas``;
        anything else (text only) leaves them to the decoder, whose 1-D positions M-RoPE passes through unchanged."""
        if position_ids is not None:
            return position_ids
        past = cache.get_seq_length() if cache is not None else 0
        has_media = image_grid_thw is not None or video_grid_thw is not None
        if input_ids is not None and has_media and (self.rope_deltas is None or past == 0):
            positions, self.rope_deltas = self.get_rope_index(
                input_ids, mm_token_type_ids, image_grid_thw, video_grid_thw, attention_mask
            )
            return positions
        if self.rope_deltas is not None and (past > 0 or input_ids is None) and (
            input_ids is not None or inputs_embeds is not None
        ):
            length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
            deltas = self.rope_deltas
            batch = (input_ids if input_ids is not None else inputs_embeds).shape[0]
            if deltas.shape[0] != batch:  # generate() expanded the batch (num_return_sequences, beams)
                deltas = deltas.repeat_interleave(batch // deltas.shape[0], dim=0)
            return mrope_decode_positions(deltas, past, length, attention_mask)
        return None

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "Qwen2-VL's base model (no LM head): the ViT and merger for images and videos, then the decoder with M-RoPE.",
        MODEL_INPUTS_DOC, QWEN2_VL_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMModelOutputWithPast` (`last_hidden_state`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`, `video_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast:
        pixels = {"pixel_values": pixel_values, "pixel_values_videos": pixel_values_videos}
        family_inputs = given(
            image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, mm_token_type_ids=mm_token_type_ids
        )
        return self.multimodal_forward(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, pixels, family_inputs,
            mm_encoder_outputs, kwargs,
        )  # fmt: skip


class ZooQwen2VLForConditionalGeneration(ZooQwen2VLPreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin):
    """Qwen2-VL with its LM head: ``AutoModelForImageTextToText`` loads it."""

    base_model_class = ZooQwen2VLModel

    def get_video_features(self, pixel_values_videos: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        """The videos' embeddings as the forward places them (``pooler_output``: one entry per video)."""
        return self.model.get_video_features(pixel_values_videos, **kwargs)

    @property
    def visual(self) -> nn.Module:
        return self.model.vision_tower

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """A new generation (nothing cached yet) starts without the ``rope_deltas`` of an earlier call."""
        cache = model_kwargs.get("cache")
        if cache is None or cache.get_seq_length() == 0:
            self.model.rope_deltas = None
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "Qwen2-VL with its LM head: logits over the vocabulary and, with `labels`, the loss.",
        MODEL_INPUTS_DOC, QWEN2_VL_INPUTS_DOC, LM_HEAD_INPUTS_DOC, MM_ENCODER_OUTPUTS_DOC, KWARGS_DOC,
        returns="`ZooVLMCausalLMOutputWithPast` (`loss`, `logits`, `cache`, `hidden_states`, `attentions`, "
        "`image_outputs`, `video_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast:
        model_inputs = dict(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw, mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
        )  # fmt: skip
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


__all__ = ["ZooQwen2VLPreTrainedModel", "ZooQwen2VLModel", "ZooQwen2VLForConditionalGeneration"]
