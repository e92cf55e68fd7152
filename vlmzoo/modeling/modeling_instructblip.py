"""The InstructBLIP family: BLIP-2 whose Q-Former also reads the instruction.

Dai et al., "InstructBLIP: Towards General-purpose Vision-Language Models with Instruction Tuning" (2023).
Everything but the Q-Former call is BLIP-2's (``modeling_blip2``): the instruction, tokenized a second time by
the Q-Former's own tokenizer (``qformer_input_ids`` / ``qformer_attention_mask``, made by the processor), is
appended to the learned queries inside transformers' ``InstructBlipQFormerModel``; only the query positions
go on to the projector. Numerically this matches transformers' ``InstructBlipForConditionalGeneration``.
"""

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs
from transformers.models.instructblip.modeling_instructblip import InstructBlipQFormerModel, InstructBlipVisionModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from ..configuration.configuration_blip2 import ZooInstructBlipConfig
from .docstrings import (
    LM_HEAD_INPUTS_DOC,
    MM_ENCODER_OUTPUTS_DOC,
    forward_docstring,
)
from .input_checks import check_text_inputs
from .vision_towers import floating_dtype
from .modeling_base import (
    ZooPreTrainedModel,
    ZooVLMForConditionalGeneration,
    given,
)
from .modeling_blip2 import (
    QFORMER_DECODER_DOC,
    QFORMER_KWARGS_DOC,
    QFORMER_PIXELS_DOC,
    QFORMER_REST_DOC,
    QFORMER_TEXT_DOC,
    QFormerGenerationMixin,
    QFormerModel,
)
from .outputs import (
    ZooVLMCausalLMOutputWithPast,
    ZooVLMModelOutputWithPast,
    ZooVLMSeq2SeqLMOutput,
    ZooVLMSeq2SeqModelOutput,
)

# the instruction as the Q-Former reads it
QFORMER_INSTRUCTION_DOC = """
        qformer_input_ids (`torch.LongTensor` of shape `(num_images, instruction_length)`, *optional*):
            The instruction in the Q-Former's own vocabulary (the processor's second tokenizer); required with
            pixels: the Q-Former reads it beside the learned queries.
        qformer_attention_mask (`torch.LongTensor` of shape `(num_images, instruction_length)`, *optional*):
            The instruction's mask (all ones when absent)."""


class ZooInstructBlipPreTrainedModel(ZooPreTrainedModel):
    config: ZooInstructBlipConfig
    config_class = ZooInstructBlipConfig
    _supports_flash_attn = False  # transformers' Q-Former has no flash-attention path
    main_input_name = "pixel_values"  # as transformers' InstructBLIP
    # as transformers' InstructBLIP: the queries stay in float32 when the model loads in float16
    _keep_in_fp32_modules = ["query_tokens"]


def check_instruction(qformer_input_ids, qformer_attention_mask, num_images: int, qformer_config) -> None:
    """The Q-Former's instruction: (num_images, length) integer ids of its own vocabulary, no longer than its position
    table, with a mask of the same shape (checked when images are encoded: prefill, never a decode step)."""
    check_text_inputs(
        qformer_input_ids, None, None, False, qformer_config.vocab_size, 0, None, prefix="qformer_"
    )  # types, 2-D, non-empty, the Q-Former's vocabulary
    if qformer_input_ids.shape[0] != num_images:
        raise ValueError(
            f"qformer_input_ids must be (num_images, length) with one row per image ({num_images}), got "
            f"{tuple(qformer_input_ids.shape)}"
        )
    positions = qformer_config.max_position_embeddings
    if qformer_input_ids.shape[1] > positions:
        raise ValueError(
            f"the instruction has {qformer_input_ids.shape[1]} Q-Former tokens, more than the Q-Former's {positions} "
            f"positions (it reads the instruction at absolute positions); shorten the instruction"
        )
    if qformer_attention_mask is not None:
        if not isinstance(qformer_attention_mask, torch.Tensor) or tuple(qformer_attention_mask.shape) != tuple(
            qformer_input_ids.shape
        ):
            shape = getattr(qformer_attention_mask, "shape", type(qformer_attention_mask).__name__)
            raise ValueError(
                f"qformer_attention_mask has shape {tuple(shape) if isinstance(shape, torch.Size) else shape} but "
                f"qformer_input_ids {tuple(qformer_input_ids.shape)}: one entry per instruction token; make both with "
                f"the same processor call"
            )


class ZooInstructBlipModel(ZooInstructBlipPreTrainedModel, QFormerModel):
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
        check_instruction(qformer_input_ids, qformer_attention_mask, image_embeds.shape[0], self.config.qformer_config)
        image_embeds = image_embeds.to(floating_dtype(self.qformer))
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
    def get_projected_image_features(
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

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "InstructBLIP's base model (no LM head): tower, instruction-aware Q-Former and projector, then the language "
        "model (with Flan-T5: its encoder over the prompt, its decoder over the decoder inputs).",
        QFORMER_PIXELS_DOC, QFORMER_INSTRUCTION_DOC, QFORMER_TEXT_DOC, QFORMER_DECODER_DOC, QFORMER_REST_DOC,
        MM_ENCODER_OUTPUTS_DOC, QFORMER_KWARGS_DOC,
        returns="`ZooVLMModelOutputWithPast` with a decoder-only LM, `ZooVLMSeq2SeqModelOutput` with an "
        "encoder-decoder LM (both with `image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        interpolate_pos_encoding: bool = False,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMModelOutputWithPast | ZooVLMSeq2SeqModelOutput:
        kwargs.update(given(decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask))
        family_inputs = given(
            qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        return self.multimodal_forward(
            input_ids, inputs_embeds, attention_mask, kwargs.pop("position_ids", None), cache, use_cache,
            {"pixel_values": pixel_values}, family_inputs, mm_encoder_outputs, kwargs,
        )  # fmt: skip


class ZooInstructBlipForConditionalGeneration(
    QFormerGenerationMixin, ZooInstructBlipPreTrainedModel, ZooVLMForConditionalGeneration, GenerationMixin
):
    """InstructBLIP with its LM head: ``AutoModelForImageTextToText`` loads it."""

    base_model_class = ZooInstructBlipModel
    # transformers' InstructBLIP: generate(pixel_values, qformer_input_ids, qformer_attention_mask, input_ids, ...)
    native_generate_order = (
        "pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids", "attention_mask"
    )  # fmt: skip

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @forward_docstring(
        "InstructBLIP with its LM head: logits over the vocabulary and, with `labels`, the loss (with Flan-T5, the "
        "decoder's: labels are the answer, shifted right into the decoder inputs when those are absent).",
        QFORMER_PIXELS_DOC, QFORMER_INSTRUCTION_DOC, QFORMER_TEXT_DOC, QFORMER_DECODER_DOC, LM_HEAD_INPUTS_DOC,
        QFORMER_REST_DOC, MM_ENCODER_OUTPUTS_DOC, QFORMER_KWARGS_DOC,
        returns="`ZooVLMCausalLMOutputWithPast` with a decoder-only LM, `ZooVLMSeq2SeqLMOutput` with an "
        "encoder-decoder LM (both with `loss`, `logits`, `image_outputs`), or a tuple with `return_dict=False`.",
    )  # fmt: skip
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        qformer_input_ids: torch.LongTensor | None = None,
        qformer_attention_mask: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.LongTensor | None = None,
        decoder_attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        interpolate_pos_encoding: bool = False,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        cache: Cache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple | ZooVLMCausalLMOutputWithPast | ZooVLMSeq2SeqLMOutput:
        model_inputs = dict(
            pixel_values=pixel_values, qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask, input_ids=input_ids, attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
            inputs_embeds=inputs_embeds, interpolate_pos_encoding=interpolate_pos_encoding, cache=cache,
            use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs,
        )  # fmt: skip
        return self.language_modeling_forward(labels, logits_to_keep, model_inputs, kwargs)


__all__ = ["ZooInstructBlipPreTrainedModel", "ZooInstructBlipModel", "ZooInstructBlipForConditionalGeneration"]
