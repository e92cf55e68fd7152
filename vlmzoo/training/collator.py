"""Batch collation for supervised VLM training: chat-formatted examples -> model inputs with labels.

Labels come from the chat template's assistant mask (``{% generation %}`` blocks, via transformers'
``return_assistant_tokens_mask``): only assistant replies are learned; the prompt, the image tokens and
the padding are -100. Works with any vlmzoo processor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

IGNORE_INDEX = -100


@dataclass
class VLMDataCollator:
    """Collate ``{"messages": [...]}`` examples (images inside the messages) for the HF ``Trainer``.

    A message's content is a string or a list of parts ``{"type": "text", "text": ...}`` /
    ``{"type": "image", "image": PIL.Image}``, the format of ``processor.apply_chat_template``.
    """

    processor: Any
    max_length: int | None = None

    def __call__(self, examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch: no examples with 'messages'")
        missing = [index for index, example in enumerate(examples) if not example.get("messages")]
        if missing:
            raise ValueError(f"examples {missing} have no (or an empty) 'messages' list of chat turns")
        conversations = [example["messages"] for example in examples]
        batch = self.processor.apply_chat_template(
            conversations,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
            return_tensors="pt",
            processor_kwargs={"padding": True, "padding_side": "right"},
        )
        input_ids = batch["input_ids"]
        if self.max_length is not None and input_ids.shape[1] > self.max_length:
            raise ValueError(
                f"a conversation has {input_ids.shape[1]} tokens (image tokens included), more than max_length="
                f"{self.max_length}; truncating would cut image tokens, so shorten the conversation instead"
            )
        assistant_mask = batch.pop("assistant_masks").bool()
        if not assistant_mask.any(dim=1).all():
            raise ValueError("an example has no assistant reply to learn from (no tokens inside {% generation %})")
        labels = input_ids.masked_fill(~assistant_mask, IGNORE_INDEX)
        labels = labels.masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
        batch["labels"] = labels
        return dict(batch)
