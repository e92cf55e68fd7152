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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import torch

from ..processing.chat_templates import check_conversation
from ..processing.processing_common import ZooProcessorMixin

IGNORE_INDEX = -100


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


def _check_messages(index: int, messages) -> None:
    """``TypeError`` / ``ValueError`` naming the example, turn and part when a conversation is malformed (the
    processors' own check, ``vlmzoo.processing.chat_templates.check_conversation``; images must be in the messages)."""
    check_conversation(messages, f"example {index}", need_images=True)


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
    # the model the batches are for (a vlmzoo model or a peft wrapper of one): sets encoder_decoder; not kept
    model: InitVar[Any] = None

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
            _check_messages(index, example["messages"])
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
