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
  which the training collator adds to every batch; none by default;
- ``tiny_tokenizer_options`` (class attribute): the options of the main tokenizer's tiny stand-in
  (``vlmzoo.tiny_tokenizer.build_tiny_tokenizer(**options)``: the special tokens, named tokens and chat template a
  family's prompts need); ``vlmzoo.presets.get_processor`` builds it; default ``{}``, the plain tiny tokenizer;
- ``chat_part_types`` (class attribute): the message part types its chat template writes (default
  ``chat_templates.PART_TYPES``: text and images; a processor that takes videos adds ``"video"``); the conversation
  check refuses other parts.

:func:`check_images_per_sample` is an input check transformers does not make: when images are given per sample
(a list of lists, one per text, as ``apply_chat_template`` passes them), each sample's list must hold as many
images as its own text asks for. transformers only compares the totals, so ``images=[[a], [b]]`` with texts
holding 2 and 0 placeholders would silently move sample 1's image into sample 0. ``ZooProcessorMixin`` runs it
for processors whose texts carry one placeholder per image; a processor that places the image tokens itself
(its own ``__call__``) calls it with its own rule (e.g. one image per prompt).

Every processor also inherits, from :class:`ZooProcessorMixin`: the conversation check of ``apply_chat_template``
(``chat_templates.check_conversation``, before rendering; each image part must hold one image when the images are
read from the messages); a clear error when truncation cuts image tokens; the image options checked per call before
transformers' own validation; ``from_pretrained`` refusing a checkpoint that lacks one of the ``extra_tokenizers``
folders (transformers would load the main tokenizer in its place); and ``save_pretrained`` without the truncation
the last call left on a fast tokenizer's backend (it would become the reloaded tokenizer's default ``max_length``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from transformers.processing_utils import ProcessorMixin

from .chat_templates import PART_TYPES, check_conversation, check_conversation_list
from .image_processing_common import VIEW_SETTINGS, check_view_settings


def _first_line(error: BaseException, limit: int = 200) -> str:
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    # options of the main tokenizer's tiny stand-in (`build_tiny_tokenizer(**tiny_tokenizer_options)`)
    tiny_tokenizer_options: ClassVar[dict[str, Any]] = {}
    # the message part types the chat template writes; check_conversation refuses the others
    chat_part_types: ClassVar[tuple[str, ...]] = PART_TYPES

    @classmethod
    def from_model_config(cls, config, tokenizer, **options) -> "ZooProcessorMixin":
        """The processor ``config`` (the family's model config) needs, with ``tokenizer`` and, by name, each of
        ``extra_tokenizers``. Every family defines it; presets, converters and docs build processors with it."""
        raise NotImplementedError(f"{cls.__name__} does not define from_model_config(config, tokenizer, ...)")

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' ``save_pretrained``, without the truncation and padding the last call left on each fast
        tokenizer's backend: ``tokenizer.json`` would keep them and the reloaded tokenizer would take that call's
        ``max_length`` as its default, so the reloaded processor would truncate every prompt (cutting image
        tokens). The backends get their state back after saving."""
        backends = [getattr(self, name)._tokenizer for name in ("tokenizer", *self.extra_tokenizers)
                    if hasattr(getattr(self, name, None), "_tokenizer")]  # fmt: skip
        states = [(backend.truncation, backend.padding) for backend in backends]
        for backend in backends:
            backend.no_truncation()
            backend.no_padding()
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            for backend, (truncation, padding) in zip(backends, states):
                if truncation is not None:
                    backend.enable_truncation(**truncation)
                if padding is not None:
                    backend.enable_padding(**padding)

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, subfolder="", **kwargs):
        """transformers' loading of a sub-tokenizer, except that a missing ``<name>/`` folder of one of
        ``extra_tokenizers`` is an error naming it: transformers 5.24 would load the main tokenizer in its place
        (a deprecated fallback that logs a warning only), which silently gives e.g. the Q-Former the LM's vocabulary."""
        if sub_processor_type == "tokenizer" or sub_processor_type not in cls.extra_tokenizers:
            return super()._load_tokenizer_from_pretrained(
                sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
            )
        folder = os.path.join(subfolder, sub_processor_type) if subfolder else sub_processor_type
        fix = (f"save the processor with save_pretrained (it writes that folder), or copy the {sub_processor_type}'s "
               f"files into '{folder}/'; the main tokenizer is not a stand-in for it")  # fmt: skip
        local = os.path.isdir(pretrained_model_name_or_path)
        if local and not os.path.isdir(os.path.join(pretrained_model_name_or_path, folder)):
            raise ValueError(
                f"{pretrained_model_name_or_path} has no '{folder}/' folder, where {cls.__name__} keeps its "
                f"{sub_processor_type}: {fix}"
            )
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(pretrained_model_name_or_path, subfolder=folder, **kwargs)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"{cls.__name__} could not load its {sub_processor_type} from the '{folder}/' folder of "
                f"{pretrained_model_name_or_path} ({_first_line(error)}): {fix}"
            ) from None

    def prompt_only_inputs(self, prompts: Sequence[str]) -> dict[str, Any]:
        """Model inputs computed from the prompts alone, for a training batch made from whole conversations.

        ``prompts``: each conversation rendered up to (without) its last assistant reply, with the generation
        prompt, as at inference. ``VLMDataCollator`` adds what this returns (tensors, one row per prompt) to every
        batch, replacing the same keys of the whole-conversation encoding. Default: nothing (``{}``).
        """
        return {}

    def _normalize_conversations(self, conversation) -> tuple[list, bool]:
        """transformers' normalisation (message objects to dicts, ``None`` values dropped, OpenAI ``image_url`` parts
        to image parts), then :func:`~vlmzoo.processing.chat_templates.check_conversation` on every conversation:
        a malformed conversation is refused, naming the conversation, turn and part, before anything is rendered."""
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and all(
            isinstance(messages, (list, tuple)) or hasattr(messages, "messages") for messages in conversation
        )
        raw = [getattr(messages, "messages", messages) for messages in conversation] if batched else [conversation]
        if batched and not all(isinstance(messages, (list, tuple)) for messages in raw):
            raise TypeError("a batch of conversations must hold one list of chat turns per conversation")
        for index, messages in enumerate(raw):
            check_conversation_list(messages, f"conversation {index}" if batched else "")
        conversations, is_batched = super()._normalize_conversations(conversation)
        for index, messages in enumerate(conversations):
            check_conversation(messages, f"conversation {index}" if is_batched else "", part_types=self.chat_part_types)
        return conversations, is_batched

    def _multimodal_inputs_from_conversations(self, conversations, *args, **kwargs):
        """transformers' reading of the images in the messages (``tokenize=True``), after checking that each image
        part holds exactly one image (a part without one would leave its placeholder without an image)."""
        for index, messages in enumerate(conversations):
            where = f"conversation {index}" if len(conversations) > 1 else ""
            check_conversation(messages, where, need_images=True, part_types=self.chat_part_types)
        return super()._multimodal_inputs_from_conversations(conversations, *args, **kwargs)

    def _merge_kwargs(self, *args, **kwargs) -> dict[str, dict]:
        # per-call image options (resample, image_mean, image_std) are checked before transformers' own type
        # validation of the processor's options, which names no fix (the image processor checks them again)
        for options in (kwargs, kwargs.get("images_kwargs") or {}):
            check_view_settings({key: options[key] for key in VIEW_SETTINGS if key in options})
        return super()._merge_kwargs(*args, **kwargs)

    def _check_special_mm_tokens(self, text, text_inputs, modalities):
        """transformers' check that tokenizing kept every placeholder, with a message that names the sample, what
        truncation kept and the fix (a ``max_length`` without padding truncates too, as the tokenizer does)."""
        try:
            super()._check_special_mm_tokens(text, text_inputs, modalities)
        except ValueError as error:
            image_token, image_token_id = getattr(self, "image_token", None), getattr(self, "image_token_id", None)
            rows = text_inputs["input_ids"]
            kept = [list(row.tolist() if hasattr(row, "tolist") else row).count(image_token_id) for row in rows]
            needed = [sample.count(image_token) for sample in text] if image_token else kept
            cut = [index for index, (have, need) in enumerate(zip(kept, needed)) if have != need]
            if not cut:
                raise
            first = cut[0]
            raise ValueError(
                f"truncation cut image tokens: sample {first} keeps {kept[first]} of its {needed[first]} "
                f"{image_token} tokens (samples cut: {cut}). Every image needs all its tokens: raise max_length "
                f"above each sample's length with its image tokens, or pass truncation=False (a max_length without "
                f"padding also truncates, as the tokenizer does)"
            ) from error

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        image_token = getattr(self, "image_token", None)
        if image_token is not None:
            check_images_per_sample(
                images, text, lambda sample: sample.count(image_token), f"one per {image_token} placeholder"
            )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
