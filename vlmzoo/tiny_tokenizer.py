"""The tiny tokenizer of the offline presets: a small byte-level BPE trained here, in memory, on a fixed corpus.

Every string encodes (byte-level), ``<image>`` is a special token, and the chat template wraps assistant replies
in ``{% generation %}`` (so training masks come from ``return_assistant_tokens_mask``). Nothing is downloaded.
A family whose prompts need other special tokens (ChatML turns, vision start/end and video placeholders) passes
its own ``special_tokens``, named tokens, end-of-sequence token and chat template (a processor class declares
them in ``tiny_tokenizer_options``, which ``vlmzoo.presets.get_processor`` passes here).
The presets (``vlmzoo.presets``) and the families' preset functions (in their configuration files) build their
tokenizers here; it imports no family and no configuration, so a configuration file may import it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

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
def _tiny_tokenizer_json(vocab_size: int, special_tokens: tuple[str, ...] = tuple(SPECIAL_TOKENS)) -> str:
    """The trained BPE as JSON (cached: training runs once per vocabulary size, special tokens and process);
    the special tokens take the first ids, in order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tokenizer.to_str()


def build_tiny_tokenizer(
    vocab_size: int = 512,
    padding_side: str = "left",
    special_tokens: Sequence[str] | None = None,
    named_tokens: Mapping[str, str] | None = None,
    bos_token: str | None = "<s>",
    eos_token: str = "</s>",
    pad_token: str = "<pad>",
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (every string encodes) with ``<image>`` and the chat template.

    ``padding_side="right"`` for encoders with absolute positions (InstructBLIP's Q-Former tokenizer).
    ``special_tokens``: every special token, in id order (default ``SPECIAL_TOKENS``); it must hold ``bos_token``
    (unless ``None``), ``eos_token``, ``pad_token`` and the values of ``named_tokens`` (attribute name -> token,
    e.g. ``{"image_token": "<image>"}``, the default; ``tokenizer.image_token`` / ``image_token_id`` then name it).
    ``chat_template``: default ``CHAT_TEMPLATE``.
    """
    special_tokens = tuple(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    named_tokens = dict({"image_token": IMAGE_TOKEN} if named_tokens is None else named_tokens)
    needed = [token for token in (bos_token, eos_token, pad_token, *named_tokens.values()) if token is not None]
    missing = [token for token in needed if token not in special_tokens]
    if missing:
        raise ValueError(f"special_tokens {list(special_tokens)} lacks {missing} (bos, eos, pad and named tokens)")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size, special_tokens)),
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        extra_special_tokens=named_tokens,
        padding_side=padding_side,
    )
    tokenizer.chat_template = CHAT_TEMPLATE if chat_template is None else chat_template
    return tokenizer


__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "SPECIAL_TOKENS", "build_tiny_tokenizer"]
