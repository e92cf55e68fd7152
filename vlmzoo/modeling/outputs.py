"""The output classes of the generic VLM pair (``modeling_base``), as transformers 5.24 shapes them.

Decoder-only language models: :class:`ZooVLMModelOutputWithPast` / :class:`ZooVLMCausalLMOutputWithPast`, subclasses
of transformers' multimodal outputs (``cache``, ``image_outputs``, ``video_outputs``). Encoder-decoder language
models (BLIP-2 with Flan-T5): :class:`ZooVLMSeq2SeqModelOutput` / :class:`ZooVLMSeq2SeqLMOutput`, transformers'
``Seq2Seq*`` fields plus the encoders' outputs. ``image_hidden_states`` stays as a deprecated alias of
``image_outputs.pooler_output``, as in transformers' LLaVA.
"""

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    MultimodalModelOutput,
)
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _deprecated_image_hidden_states(output) -> list[torch.Tensor] | None:
    logger.warning_once(
        "`image_hidden_states` is deprecated (as in transformers' own multimodal outputs); use "
        "`out.image_outputs.pooler_output`, "
        "the per-image list of projected visual embeddings."
    )
    return None if output.image_outputs is None else output.image_outputs.pooler_output


@dataclass
class ZooVLMModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """Base-model output: ``last_hidden_state, cache, hidden_states, attentions, image_outputs, video_outputs``."""

    image_hidden_states = property(_deprecated_image_hidden_states)


@dataclass
class ZooVLMCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """``…ForConditionalGeneration`` output: ``loss, logits, cache, hidden_states, attentions, image_outputs``."""

    image_hidden_states = property(_deprecated_image_hidden_states)


@dataclass
class ZooVLMSeq2SeqModelOutput(MultimodalModelOutput):
    """Base-model output with an encoder-decoder LM: the decoder's ``last_hidden_state``, ``cache``,
    ``decoder_hidden_states``, ``decoder_attentions``, ``cross_attentions``, the encoder's
    ``encoder_last_hidden_state``, ``encoder_hidden_states``, ``encoder_attentions``, and ``image_outputs``."""

    last_hidden_state: torch.FloatTensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None

    image_hidden_states = property(_deprecated_image_hidden_states)


@dataclass
class ZooVLMSeq2SeqLMOutput(MultimodalModelOutput):
    """``…ForConditionalGeneration`` output with an encoder-decoder LM: ``loss, logits`` (decoder positions) and
    the fields of :class:`ZooVLMSeq2SeqModelOutput`."""

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None
    decoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    decoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    encoder_last_hidden_state: torch.FloatTensor | None = None
    encoder_hidden_states: tuple[torch.FloatTensor, ...] | None = None
    encoder_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_outputs: BaseModelOutputWithPooling | None = None
    video_outputs: BaseModelOutputWithPooling | None = None

    image_hidden_states = property(_deprecated_image_hidden_states)


__all__ = [
    "ZooVLMModelOutputWithPast",
    "ZooVLMCausalLMOutputWithPast",
    "ZooVLMSeq2SeqModelOutput",
    "ZooVLMSeq2SeqLMOutput",
]
