"""The output classes of the generic VLM pair (``modeling_base``), as transformers 5.24 shapes them.

Decoder-only language models: :class:`ZooVLMModelOutputWithPast` / :class:`ZooVLMCausalLMOutputWithPast`, subclasses
of transformers' multimodal outputs (``cache``, ``image_outputs``, ``video_outputs``). Encoder-decoder language
models (BLIP-2 with Flan-T5): :class:`ZooVLMSeq2SeqModelOutput` / :class:`ZooVLMSeq2SeqLMOutput`, transformers'
``Seq2Seq*`` fields plus the encoders' outputs. ``image_hidden_states`` stays as a deprecated alias of
``image_outputs.pooler_output``, as in transformers' LLaVA.
"""

from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
    MultimodalModelOutput,
)
from transformers.utils.generic import ModelOutput
from transformers.utils import logging

logger = logging.get_logger(__name__)

# the cache's names before transformers 5.24, which ModelOutput maps to `cache`
_OLD_CACHE_NAMES = ("past_key_values", "cache_params")


def _cached_field_names(cls):
    """A class decorator (after ``@dataclass``): ``ModelOutput.__setattr__`` with the field names read once per class.

    transformers' ``ModelOutput.__setattr__`` rebuilds the set of field names with ``dataclasses.fields()`` for every
    attribute set, and the dataclass ``__init__`` sets every field: ~1.5 us per field and per output object, paid on
    each forward (a decode step builds one output per module level). This does exactly what transformers' does (the
    old cache names mapped to ``cache``, a non-``None`` field also stored as a dict item, the attribute set), with the
    names kept in a frozenset on the class. A subclass (which may add fields) takes transformers' own path.
    """
    cls._zoo_field_names = frozenset(field.name for field in fields(cls))

    def __setattr__(self, name, value):
        if type(self) is not cls:
            return ModelOutput.__setattr__(self, name, value)
        if name in _OLD_CACHE_NAMES:
            name = self._replace_old_cache_name(name)
        if value is not None and name in self._zoo_field_names:
            OrderedDict.__setitem__(self, name, value)
        object.__setattr__(self, name, value)

    cls.__setattr__ = __setattr__
    return cls


def _deprecated_image_hidden_states(output) -> list[torch.Tensor] | None:
    logger.warning_once(
        "`image_hidden_states` is deprecated (as in transformers' own multimodal outputs); use "
        "`out.image_outputs.pooler_output`, "
        "the per-image list of projected visual embeddings."
    )
    return None if output.image_outputs is None else output.image_outputs.pooler_output


@_cached_field_names
@dataclass
class ZooVLMModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """Base-model output: ``last_hidden_state, cache, hidden_states, attentions, image_outputs, video_outputs``."""

    image_hidden_states = property(_deprecated_image_hidden_states)


@_cached_field_names
@dataclass
class ZooVLMCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """``…ForConditionalGeneration`` output: ``loss, logits, cache, hidden_states, attentions, image_outputs``."""

    image_hidden_states = property(_deprecated_image_hidden_states)


@_cached_field_names
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


@_cached_field_names
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
