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


# where an image part of a message keeps its image (as transformers' apply_chat_template reads it)
IMAGE_PART_KEYS = ("image", "url", "path", "base64")


def _check_messages(index: int, messages) -> None:
    """``TypeError`` / ``ValueError`` naming the example and turn when a conversation is malformed."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"example {index}: 'messages' must be a list of chat turns, got {type(messages).__name__}")
    for turn, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message:
            raise TypeError(f"example {index}, turn {turn}: a chat turn is a dict with 'role' and 'content', got {message!r:.80}")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, (list, tuple)) or not all(isinstance(part, dict) for part in content):
            raise TypeError(
                f"example {index}, turn {turn}: 'content' must be a string or a list of parts "
                f"({{'type': 'text', 'text': ...}} / {{'type': 'image', 'image': ...}}), got {content!r:.80}"
            )
        for part in content:
            if part.get("type") == "image" and not any(part.get(key) is not None for key in IMAGE_PART_KEYS):
                raise ValueError(
                    f"example {index}, turn {turn}: an image part holds no image; give it one of "
                    f"{', '.join(repr(key) for key in IMAGE_PART_KEYS)}"
                )


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
