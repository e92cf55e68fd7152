"""The tiny tokenizer of the offline presets: a small byte-level BPE trained here, in memory, on a fixed corpus.

Every string encodes (byte-level), ``<image>`` is a special token, and the chat template wraps assistant replies
in ``{% generation %}`` (so training masks come from ``return_assistant_tokens_mask``). Nothing is downloaded.
The presets (``vlmzoo.presets``) and the families' preset functions (in their configuration files) build their
tokenizers here; it imports no family and no configuration, so a configuration file may import it.
"""

from __future__ import annotations

import functools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .processing.chat_templates import vicuna_chat_template

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]

# LLaVA's vicuna_v1 style with newline-separated turns and no default system prompt; {% generation %}
# marks what the model learns to write
CHAT_TEMPLATE = vicuna_chat_template(system_prompt=None, user_end="\n", assistant_end="\n")

_CORPUS = [
    "USER: ASSISTANT: SYSTEM: A chat between a curious user and an artificial intelligence assistant.",
    "What color is the shape? What shape is in the image? Where is the shape? Is it on the left or the right?",
    "What is the color of the object? Which shape do you see? Describe the image. How many objects are there?",
    "red green blue yellow white black purple orange cyan magenta gray pink brown",
    "circle square triangle cross ring star rectangle diamond",
    "left right top bottom center middle upper lower corner",
    "The image shows a small red circle on the left. There is a blue square at the top.",
    "yes no one two three four five six seven eight nine ten zero",
    "a an the is are was were in on at of to and or with for this that it there here image picture photo",
    "Hello world! The quick brown fox jumps over the lazy dog. 0123456789 .,;:!?'\"()[]{}-_/",
]


@functools.lru_cache(maxsize=None)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    """The trained BPE as JSON (cached: training runs once per vocabulary size and process)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(vocab_size: int = 512, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (every string encodes) with ``<image>`` and the chat template.

    ``padding_side="right"`` for encoders with absolute positions (InstructBLIP's Q-Former tokenizer).
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        padding_side=padding_side,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "SPECIAL_TOKENS", "build_tiny_tokenizer"]
