"""The base every vlmzoo processor inherits, and the per-sample image check (docs/design.md §3, §4).

:class:`ZooProcessorMixin` is transformers' ``ProcessorMixin`` plus the hooks shared code calls on any
family's processor, so that shared code never asks which family it holds (docs/adding_a_family.md):

- ``extra_tokenizers`` (class attribute): the tokenizers the processor takes besides ``tokenizer``, by
  ``__init__`` argument name, each with the options of its tiny stand-in (``vlmzoo.tiny_tokenizer``);
  ``vlmzoo.presets.get_processor`` builds them, converters load them from the checkpoint's ``<name>/``
  folder (where ``ProcessorMixin.save_pretrained`` writes them);
- ``from_model_config(config, tokenizer, **extra_tokenizers, **options)``: the processor a model config
  needs, built in one place (presets, converters, docs);
- ``prompt_only_inputs(prompts)``: inputs that must see the prompt only (never the reply being learned),
  which the training collator adds to every batch; none by default.

:func:`check_images_per_sample` is an input check transformers does not make: when images are given per sample
(a list of lists, one per text, as ``apply_chat_template`` passes them), each sample's list must hold as many
images as its own text asks for. transformers only compares the totals, so ``images=[[a], [b]]`` with texts
holding 2 and 0 placeholders would silently move sample 1's image into sample 0. ``ZooProcessorMixin`` runs it
for processors whose texts carry one placeholder per image; a processor that places the image tokens itself
(its own ``__call__``) calls it with its own rule (e.g. one image per prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from transformers.processing_utils import ProcessorMixin


def _is_nested(images) -> bool:
    return isinstance(images, (list, tuple)) and any(isinstance(entry, (list, tuple)) for entry in images)


def check_images_per_sample(images, text, images_expected: Callable[[str], int], rule: str) -> None:
    """``ValueError`` naming the sample and both counts when a sample's images disagree with its text.

    ``images``: anything transformers accepts; only a list of lists (one list per sample) is checked here.
    ``text``: the batch of strings (a single string is one sample). ``images_expected(text)``: how many images
    that text asks for; ``rule``: why, for the message (e.g. "one per <image> placeholder").
    """
    if images is None or text is None or not _is_nested(images):
        return
    texts = [text] if isinstance(text, str) else list(text)
    if not all(isinstance(entry, (list, tuple)) for entry in images):
        raise ValueError(
            "images mix single images and per-sample lists; pass either one flat list of images or one list of "
            "images per text"
        )
    if len(images) != len(texts):
        raise ValueError(
            f"images are given per sample ({len(images)} lists) but there are {len(texts)} texts; pass one list of "
            f"images per text (an empty list for a text without images)"
        )
    for index, (sample_images, sample_text) in enumerate(zip(images, texts)):
        expected = images_expected(sample_text) if isinstance(sample_text, str) else len(sample_images)
        if expected != len(sample_images):
            raise ValueError(
                f"sample {index} has {len(sample_images)} image(s) in its list but its text needs {expected} ({rule}); "
                f"give each sample exactly the images its own text asks for"
            )


class ZooProcessorMixin(ProcessorMixin):
    """``ProcessorMixin`` with vlmzoo's processor hooks (see the module docstring) and the per-sample image
    check: one image per ``image_token`` in each text.

    The hooks are class attributes and methods only: ``ProcessorMixin`` saves what ``__init__`` takes and the
    sub-processors, so nothing here changes what ``save_pretrained`` writes.
    """

    # tokenizers besides `tokenizer`: `__init__` argument (and save folder) name -> options of the tiny stand-in
    # (`vlmzoo.tiny_tokenizer.build_tiny_tokenizer(**options)`, e.g. {"padding_side": "right"})
    extra_tokenizers: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_model_config(cls, config, tokenizer, **options) -> "ZooProcessorMixin":
        """The processor ``config`` (the family's model config) needs, with ``tokenizer`` and, by name, each of
        ``extra_tokenizers``. Every family defines it; presets, converters and docs build processors with it."""
        raise NotImplementedError(f"{cls.__name__} does not define from_model_config(config, tokenizer, ...)")

    def prompt_only_inputs(self, prompts: Sequence[str]) -> dict[str, Any]:
        """Model inputs computed from the prompts alone, for a training batch made from whole conversations.

        ``prompts``: each conversation rendered up to (without) its last assistant reply, with the generation
        prompt, as at inference. ``VLMDataCollator`` adds what this returns (tensors, one row per prompt) to every
        batch, replacing the same keys of the whole-conversation encoding. Default: nothing (``{}``).
        """
        return {}

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        image_token = getattr(self, "image_token", None)
        if image_token is not None:
            check_images_per_sample(
                images, text, lambda sample: sample.count(image_token), f"one per {image_token} placeholder"
            )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
