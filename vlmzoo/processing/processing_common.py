"""What every vlmzoo processor shares on top of transformers' ``ProcessorMixin``.

:func:`check_images_per_sample` is an input check transformers does not make: when images are given per sample
(a list of lists, one per text, as ``apply_chat_template`` passes them), each sample's list must hold as many
images as its own text asks for. transformers only compares the totals, so ``images=[[a], [b]]`` with texts
holding 2 and 0 placeholders would silently move sample 1's image into sample 0. :class:`ZooProcessorMixin`
runs it for processors whose texts carry one placeholder per image (LLaVA); a processor that places the image
tokens itself calls it with its own rule (the Q-Former families: one image per prompt).
"""

from __future__ import annotations

from collections.abc import Callable

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
    """``ProcessorMixin`` with the per-sample image check: one image per ``image_token`` in each text."""

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        image_token = getattr(self, "image_token", None)
        if image_token is not None:
            check_images_per_sample(
                images, text, lambda sample: sample.count(image_token), f"one per {image_token} placeholder"
            )
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)
