"""Batch collation for supervised VLM training: chat-formatted examples -> model inputs with labels.

Labels come from the chat template's assistant mask (``{% generation %}`` blocks, via transformers'
``return_assistant_tokens_mask``): only assistant replies are learned; the prompt, the image tokens and
the padding are -100. Works with any vlmzoo processor (a ``ZooProcessorMixin``). Inputs that must see the
prompt only (InstructBLIP's Q-Former instruction: it must not read the answer it learns to give) come from the
processor's hook ``prompt_only_inputs(prompts)`` (``vlmzoo.processing.processing_common``; ``{}`` by default),
called on every batch with each conversation rendered up to its last reply, as at inference.

For a model whose language model is an encoder-decoder (BLIP-2 / InstructBLIP with Flan-T5), the last assistant
reply becomes the decoder's ``labels`` (ending with the tokenizer's EOS, as T5 targets do) and everything before it,
earlier replies included, is the encoder's ``input_ids``; the model shifts the labels right into
``decoder_input_ids`` itself. The collator cannot tell the kind from the processor (a tokenizer serves either), so
it takes it from the model: ``VLMDataCollator(processor, model=model)`` (a peft wrapper too), or from
``encoder_decoder=``; both given must agree. Without either it lays batches out for a decoder-only LM, and an
encoder-decoder model refuses such a batch (labels that repeat the prompt's tokens at their own positions) with a
``ValueError`` saying to pass ``model=``, instead of training its decoder on the whole conversation.

Padding-free batches (``packing=True``, with ``model=``): the batch's samples go into one row, as transformers'
``DataCollatorWithFlattening`` lays out text (:func:`pack_batch`): ``input_ids`` and ``labels`` of shape (1, total)
with no padding, ``labels`` -100 at each sample's first token (the loss shifts the labels, so that token would
otherwise be learned as the continuation of the previous sample), ``position_ids`` restarting at 0 per sample --
(1, total), or (4, 1, total) for a model whose positions have three M-RoPE streams (row 0 the text positions), from
the model's hook ``packing_position_ids`` -- and no ``attention_mask``: the model keeps each sample's attention to
itself (``vlmzoo.modeling.packing``: a block-diagonal causal mask on sdpa / eager / flex, varlen kwargs on flash
attention; anything else raises). The pixels and the family inputs (one row per image, as InstructBLIP's
``qformer_input_ids``) stay as the padded batch has them, the images in sample order. The loss is the mean over the
same learned tokens as the padded batch's, so a packed step computes what the padded step computes, without the
padding. Encoder-decoder language models are refused (``ValueError``): their encoder would need a block-diagonal
bidirectional mask and their decoder per-sample self- and cross-attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import torch

from ..processing.chat_templates import check_conversation
from ..processing.processing_common import ZooProcessorMixin

IGNORE_INDEX = -100
# inputs with one entry per token (flattened by packing); every other input is per image or per batch and kept
TOKEN_ALIGNED_INPUTS = ("input_ids", "labels", "token_type_ids", "mm_token_type_ids")


def _skeleton():
    from ..modeling.modeling_base import ZooVLMModel  # not at import time: training stays importable on its own

    return ZooVLMModel


def _vlm_base_model(model: Any):
    """The ``ZooVLMModel`` inside ``model`` (a vlmzoo model, its base model or a peft wrapper of one)."""
    for module in model.modules() if hasattr(model, "modules") else ():
        if isinstance(module, _skeleton()):
            return module
    raise TypeError(
        f"VLMDataCollator(packing=True, model=...) takes the vlmzoo model the batches are for (or a peft wrapper of "
        f"one), got {type(model).__name__}"
    )


def pack_batch(batch: dict, position_streams: Callable[..., torch.Tensor] | None = None) -> dict:
    """A right-padded batch (one sample per row) as one padding-free row (see the module docstring).

    Args:
        batch: ``input_ids``, ``attention_mask`` (1 on each row's tokens, padding only on the right) and ``labels``
            of shape (B, L), and any other model inputs (pixels, family inputs: kept as they are).
        position_streams: ``model.packing_position_ids`` (``(input_ids, attention_mask, **other inputs)`` ->
            (streams, B, L)) for a model with its own positions; ``None``: 0 .. n - 1 per sample.

    Returns the batch with ``input_ids``, ``labels`` (and other per-token inputs) of shape (1, total), ``labels``
    -100 at each sample's first token, ``position_ids`` (1, total) or, with three streams, (4, 1, total), and no
    ``attention_mask``.
    """
    input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
    if attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError("pack_batch needs the (batch, length) attention_mask of the padded batch it packs")
    keep = attention_mask.bool()
    lengths = keep.sum(1)
    if not bool((keep == (torch.arange(keep.shape[1]) < lengths[:, None])).all()) or not bool((lengths > 0).all()):
        raise ValueError("pack_batch needs rows padded on the right (padding_side='right'), each with tokens")
    others = {name: value for name, value in batch.items() if name not in ("attention_mask", *TOKEN_ALIGNED_INPUTS)}
    if position_streams is None:
        streams = (attention_mask.long().cumsum(-1) - 1).unsqueeze(0)  # (1, B, L)
    else:
        # the hook reads the padded batch: every input but the labels (per-token ones such as mm_token_type_ids too)
        inputs = {name: value for name, value in batch.items() if name not in ("input_ids", "attention_mask", "labels")}
        streams = position_streams(input_ids, attention_mask, **inputs)
        if not isinstance(streams, torch.Tensor) or streams.dim() != 3 or streams.shape[1:] != input_ids.shape:
            shape = tuple(streams.shape) if isinstance(streams, torch.Tensor) else type(streams).__name__
            raise ValueError(f"packing_position_ids must return (streams, batch, length) positions, got {shape}")
    packed = dict(others)
    for name in TOKEN_ALIGNED_INPUTS:
        value = batch.get(name)
        if isinstance(value, torch.Tensor) and value.shape[:2] == input_ids.shape:
            packed[name] = value[keep].unsqueeze(0)  # (B, L, ...) -> (1, total, ...)
    starts = torch.cumsum(lengths, 0) - lengths  # each sample's first token in the packed row
    if "labels" in packed:
        packed["labels"][0, starts] = IGNORE_INDEX
    text = (keep.long().cumsum(-1) - 1)[keep].unsqueeze(0)  # (1, total): 0 .. n - 1 per sample
    if streams.shape[0] == 1:
        packed["position_ids"] = text
    else:
        # (streams, B, L) -> (streams, total) -> (1 + streams, 1, total): text positions first
        packed["position_ids"] = torch.cat([text, streams[:, keep].long()]).unsqueeze(1)
    return packed


def _is_encoder_decoder(model: Any) -> bool:
    """Whether ``model``'s language model is an encoder-decoder (its ``config.is_encoder_decoder``; a peft wrapper
    exposes the wrapped model's config)."""
    config = getattr(model, "config", None)
    flag = getattr(config, "is_encoder_decoder", None)
    if not isinstance(flag, bool):
        raise TypeError(
            f"VLMDataCollator(model=...) takes the model the batches are for (a vlmzoo model or a peft wrapper of one), "
            f"got {type(model).__name__}, which has no config.is_encoder_decoder"
        )
    return flag


def _check_messages(index: int, messages, part_types) -> None:
    """``TypeError`` / ``ValueError`` naming the example, turn and part when a conversation is malformed (the
    processors' own check, ``vlmzoo.processing.chat_templates.check_conversation``; images must be in the messages)."""
    check_conversation(messages, f"example {index}", need_images=True, part_types=part_types)


@dataclass
class VLMDataCollator:
    """Collate ``{"messages": [...]}`` examples (images inside the messages) for the HF ``Trainer``.

    A message's content is a string or a list of parts ``{"type": "text", "text": ...}`` /
    ``{"type": "image", "image": PIL.Image}``, the format of ``processor.apply_chat_template``.
    """

    processor: Any
    max_length: int | None = None
    # the model's config.is_encoder_decoder (Flan-T5 language models); None: the model's, or decoder-only without one
    encoder_decoder: bool | None = None
    # the model the batches are for (a vlmzoo model or a peft wrapper of one): sets encoder_decoder; kept only for a
    # packing model with its own positions (its `packing_position_ids` hook)
    model: InitVar[Any] = None
    # padding-free batches: every example of a call in one row (module docstring); needs model=
    packing: bool = False

    def __post_init__(self, model: Any = None):
        if not isinstance(self.processor, ZooProcessorMixin):
            raise TypeError(
                f"VLMDataCollator takes a vlmzoo processor (a ZooProcessorMixin, e.g. from AutoProcessor after "
                f"`import vlmzoo`, or vlmzoo.presets.get_processor), got {type(self.processor).__name__}"
            )
        if self.encoder_decoder is not None and not isinstance(self.encoder_decoder, bool):
            raise TypeError(f"encoder_decoder must be True, False or None, got {self.encoder_decoder!r}")
        if self.max_length is not None and (isinstance(self.max_length, bool) or not isinstance(self.max_length, int)
                                            or self.max_length < 1):  # fmt: skip
            raise ValueError(f"max_length must be a positive number of tokens or None, got {self.max_length!r}")
        if model is not None:
            kind = _is_encoder_decoder(model)
            if self.encoder_decoder is not None and self.encoder_decoder != kind:
                lm = "an encoder-decoder" if kind else "a decoder-only"
                raise ValueError(
                    f"encoder_decoder={self.encoder_decoder} disagrees with the model, whose language model is {lm} "
                    f"LM; leave encoder_decoder out when you pass model="
                )
            self.encoder_decoder = kind
        elif self.encoder_decoder is None:
            self.encoder_decoder = False
        if not isinstance(self.packing, bool):
            raise TypeError(f"packing must be True or False, got {self.packing!r}")
        self._position_streams = None
        if self.packing:
            if model is None:
                raise ValueError(
                    "packing=True needs the model the batches are for: VLMDataCollator(processor, packing=True, "
                    "model=model) (its kind of language model and its positions decide the packed layout)"
                )
            if self.encoder_decoder:
                raise ValueError(
                    "packing=True with an encoder-decoder language model: packed rows would need a block-diagonal "
                    "bidirectional mask in its encoder and per-sample self- and cross-attention in its decoder, which "
                    "vlmzoo does not build; use padded batches (packing=False)"
                )
            base, skeleton = _vlm_base_model(model), _skeleton()
            own_hook = type(base).packing_position_ids is not skeleton.packing_position_ids
            if own_hook or type(base).compute_position_ids is not skeleton.compute_position_ids:
                if not own_hook:
                    raise ValueError(
                        f"packing=True: {type(base).__name__} computes its own positions (compute_position_ids) but has "
                        f"no packing_position_ids hook, so packed samples would get plain positions; the family must "
                        f"implement packing_position_ids (docs/adding_a_family.md), or use padded batches"
                    )
                self._position_streams = base.packing_position_ids

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch: no examples with 'messages'")
        not_dicts = [index for index, example in enumerate(examples) if not isinstance(example, dict)]
        if not_dicts:
            raise TypeError(
                f"examples {not_dicts} are not dicts; each example is {{'messages': [chat turns]}}, got "
                f"{type(examples[not_dicts[0]]).__name__}"
            )
        missing = [index for index, example in enumerate(examples) if not example.get("messages")]
        if missing:
            raise ValueError(f"examples {missing} have no (or an empty) 'messages' list of chat turns")
        for index, example in enumerate(examples):
            _check_messages(index, example["messages"], self.processor.chat_part_types)
        conversations = [example["messages"] for example in examples]
        batch = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        batch.update(self.processor.prompt_only_inputs(self._prompts(conversations)))
        input_ids = batch["input_ids"]
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"a conversation has {input_ids.shape[1]} tokens (image tokens included), more than max_length="
                f"{self.max_length}; truncating would cut image tokens, so shorten the conversation instead"
            )
        assistant_mask = batch.pop("assistant_masks").bool()
        if not assistant_mask.any(dim=1).all():
            raise ValueError("an example has no assistant reply to learn from (no tokens inside {% generation %})")
        if self.encoder_decoder:
            return self._split_last_reply(dict(batch), assistant_mask & batch["attention_mask"].bool())
        labels = input_ids.masked_fill(~assistant_mask, IGNORE_INDEX)
        labels = labels.masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        batch["labels"] = labels
        if self.packing:
            return pack_batch(dict(batch), self._position_streams)
        return dict(batch)

    def _prompts(self, conversations) -> list[str]:
        """Each conversation rendered up to (without) its last assistant reply, with the generation prompt."""
        prompts = []
        for messages in conversations:
            last = max((i for i, message in enumerate(messages) if message["role"] == "assistant"), default=None)
            history = list(messages[:last]) if last is not None else list(messages)
            prompts.append(self.processor.apply_chat_template(history, add_generation_prompt=True, tokenize=False))
        return prompts

    def _split_last_reply(self, batch: dict, reply_mask: torch.Tensor) -> dict:
        """Encoder-decoder rows: the prompt (up to the last reply) as ``input_ids``, that reply (+ EOS) as labels."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        prompts, replies = [], []
        for ids, mask in zip(batch["input_ids"].tolist(), reply_mask.tolist()):
            end = max(index for index, inside in enumerate(mask) if inside) + 1
            start = end
            while start > 0 and mask[start - 1]:  # the last contiguous reply
                start -= 1
            reply = ids[start:end]
            if eos is not None and reply[-1] != eos:
                reply.append(eos)
            prompts.append(ids[:start])
            replies.append(reply)
        width, target = max(map(len, prompts)), max(map(len, replies))
        batch["input_ids"] = torch.tensor([row + [pad] * (width - len(row)) for row in prompts])
        batch["attention_mask"] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in prompts])
        batch["labels"] = torch.tensor([row + [IGNORE_INDEX] * (target - len(row)) for row in replies])
        return batch
