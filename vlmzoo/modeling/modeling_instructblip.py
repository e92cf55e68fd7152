"""The InstructBLIP family: BLIP-2 whose Q-Former also reads the instruction.

Dai et al., "InstructBLIP: Towards General-purpose Vision-Language Models with Instruction Tuning" (2023).
Everything but the Q-Former call is BLIP-2's (``modeling_blip2``): the instruction, tokenized a second time by
the Q-Former's own tokenizer (``qformer_input_ids`` / ``qformer_attention_mask``, made by the processor), is
appended to the learned queries inside transformers' ``InstructBlipQFormerModel``; only the query positions
go on to the projector. Numerically this matches transformers' ``InstructBlipForConditionalGeneration``.
"""

import torch
from transformers import GenerationMixin
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs
from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel, InstructBlipVisionModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_blip2 import ZooInstructBlipConfig
from .modeling_base import ZooPreTrainedModel, ZooVLMForConditionalGeneration
from .modeling_blip2 import QFormerGenerationMixin, ZooBlip2Model


class ZooInstructBlipPreTrainedModel(ZooPreTrainedModel):
    config: ZooInstructBlipConfig
    config_class = ZooInstructBlipConfig
    _supports_flash_attn = False  # transformers' Q-Former has no flash-attention path


class ZooInstructBlipModel(ZooInstructBlipPreTrainedModel, ZooBlip2Model):
    """BLIP-2's layout with an instruction-aware Q-Former."""

    family_input_names = ("qformer_input_ids", "qformer_attention_mask", "interpolate_pos_encoding")
    vision_tower_class = InstructBlipVisionModel
    qformer_class = InstructBlipQFormerModel

    def run_qformer(self, image_embeds, qformer_input_ids=None, qformer_attention_mask=None):
        """Queries + instruction tokens through the Q-Former; the output keeps the query positions only."""
        if qformer_input_ids is None:
            raise ValueError(
                "InstructBLIP's Q-Former reads the instruction: pass qformer_input_ids (and qformer_attention_mask), "
                "which the model's processor makes"
            )
        if qformer_input_ids.dim() != 2 or qformer_input_ids.shape[0] != image_embeds.shape[0]:
            raise ValueError(
                f"qformer_input_ids must be (num_images, length) with one row per image ({image_embeds.shape[0]}), "
                f"got {tuple(qformer_input_ids.shape)}"
            )
        image_embeds = image_embeds.to(self.qformer.dtype)
        batch, num_queries = image_embeds.shape[0], self.config.num_query_tokens
        queries = self.query_tokens(batch, like=image_embeds)  # (images, queries, width)
        if qformer_attention_mask is None:
            qformer_attention_mask = torch.ones_like(qformer_input_ids)
        query_mask = torch.ones(batch, num_queries, dtype=qformer_attention_mask.dtype, device=image_embeds.device)
        # (images, queries + instruction length): queries first, as the Q-Former's embeddings lay them out
        attention_mask = torch.cat([query_mask, qformer_attention_mask.to(image_embeds.device)], dim=1)
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        outputs = self.qformer(
            input_ids=qformer_input_ids,
            attention_mask=attention_mask,
            query_embeds=queries,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
            return_dict=True,
        )
        return outputs, outputs.last_hidden_state[:, :num_queries]

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool | None = False,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | BaseModelOutputWithVisionQformerOutputs:
        """As BLIP-2's, with the instruction (``qformer_input_ids``, required) fed to the Q-Former."""
        qformer_inputs = {"qformer_input_ids": qformer_input_ids, "qformer_attention_mask": qformer_attention_mask}
        return self._image_features(pixel_values, interpolate_pos_encoding, qformer_inputs, kwargs)


class ZooInstructBlipForConditionalGeneration(
    QFormerGenerationMixin,
    ZooInstructBlipPreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin
):
    """InstructBLIP with its LM head: ``AutoModelForImageTextToText`` loads it."""

    # transformers' InstructBLIP: model(pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, ...)
    native_pixels_first_order = (
        "pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask",
        "decoder_input_ids", "decoder_attention_mask",
    )  # fmt: skip

    base_model_class = ZooInstructBlipModel


__all__ = ["ZooInstructBlipPreTrainedModel", "ZooInstructBlipModel", "ZooInstructBlipForConditionalGeneration"]
