"""vlmzoo's LLaVA processors against transformers' for the same images, prompts and settings.

``ZooLlavaProcessor`` over ``ZooFixedResImageProcessor`` must equal transformers' ``LlavaProcessor`` over
``LlavaImageProcessorPil`` (``pad_to_square`` here is ``do_pad`` there), and over ``ZooAnyResImageProcessor``
it must equal ``LlavaNextProcessor`` over ``LlavaNextImageProcessorPil``: the same ``input_ids`` (so the same
number of image tokens), ``attention_mask``, pixel tensors (to 1e-6) and ``image_sizes``. Images cover very
wide and very tall shapes, grayscale and RGBA; settings cover both feature-selection strategies, CLIP-style
(resize + crop) and SigLIP-style (squash) towers, and the default and custom AnyRes pinpoints.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor

from vlmzoo import ZooAnyResImageProcessor, ZooFixedResImageProcessor, ZooLlavaProcessor
from vlmzoo.presets import build_tiny_tokenizer

from _reference_llava import PATCH, PINPOINTS, image_kwargs, random_image, reference_processor

# (height, width, mode): ordinary, very wide, very tall, tiny, square grayscale, RGBA
IMAGES = [(40, 70, "RGB"), (12, 300, "RGB"), (290, 9, "RGB"), (3, 5, "RGB"), (33, 33, "L"), (50, 21, "RGBA")]
TOWERS = {  # strategy, tower style, tokens the tower adds besides patches
    "clip-default": ("default", "clip", 1),
    "clip-full": ("full", "clip", 1),
    "siglip-full": ("full", "siglip", 0),
}
CUSTOM_PINPOINTS = [[32, 96], [64, 32], [96, 96], [32, 32]]  # asymmetric, includes a single tile
FAST = settings(max_examples=40, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def processors(kind: str, tokenizer, tower_key: str, pad: bool = False, pinpoints=None):
    """(ours, transformers') for one setting."""
    strategy, tower, extra = TOWERS[tower_key]
    if kind == "llava":
        image_processor = ZooFixedResImageProcessor(pad_to_square=pad, **image_kwargs(tower))
        theirs = reference_processor("llava", tokenizer, strategy, extra, tower=tower, do_pad=pad)
    else:
        image_processor = ZooAnyResImageProcessor(image_grid_pinpoints=pinpoints, **image_kwargs(tower))
        theirs = reference_processor("llava_next", tokenizer, strategy, extra, pinpoints=pinpoints, tower=tower)
    ours = ZooLlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        vision_feature_select_strategy=strategy, num_additional_image_tokens=extra,
    )  # fmt: skip
    return ours, theirs


def assert_same_outputs(ours, theirs, images, texts) -> dict:
    mine = ours(images=images, text=texts, return_tensors="np", padding=True)
    reference = theirs(images=images, text=texts, return_tensors="np", padding=True)
    assert set(mine) == set(reference)
    np.testing.assert_array_equal(mine["input_ids"], reference["input_ids"])
    np.testing.assert_array_equal(mine["attention_mask"], reference["attention_mask"])
    assert mine["pixel_values"].shape == reference["pixel_values"].shape
    np.testing.assert_allclose(mine["pixel_values"], reference["pixel_values"], atol=1e-6, rtol=0)
    if "image_sizes" in reference:
        np.testing.assert_array_equal(mine["image_sizes"], reference["image_sizes"])
    return mine


def texts_for(count: int) -> list[str]:
    """One prompt per image, of different lengths (so the batch is padded)."""
    return [f"USER: <image>\nWhat is in picture {i}?{' Describe it.' * i} ASSISTANT:" for i in range(count)]


@pytest.mark.parametrize("tower_key", list(TOWERS))
@pytest.mark.parametrize("pad", [False, True], ids=["no-pad", "pad-to-square"])
def test_fixed_resolution_matches_transformers(tokenizer, tower_key, pad):
    ours, theirs = processors("llava", tokenizer, tower_key, pad=pad)
    images = [random_image(h, w, seed, mode) for seed, (h, w, mode) in enumerate(IMAGES)]
    outputs = assert_same_outputs(ours, theirs, images, texts_for(len(images)))
    strategy, _, extra = TOWERS[tower_key]
    per_image = 16 + extra - (strategy == "default")  # (32 / 8)^2 patches
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    assert ((outputs["input_ids"] == image_token_id).sum(axis=1) == per_image).all()


@pytest.mark.parametrize("tower_key", ["clip-default", "siglip-full"])
@pytest.mark.parametrize("pinpoints", [PINPOINTS, CUSTOM_PINPOINTS], ids=["tiny-default-grid", "custom-grid"])
def test_anyres_matches_transformers(tokenizer, tower_key, pinpoints):
    ours, theirs = processors("llava_next", tokenizer, tower_key, pinpoints=pinpoints)
    images = [random_image(h, w, seed, mode) for seed, (h, w, mode) in enumerate(IMAGES)]
    outputs = assert_same_outputs(ours, theirs, images, texts_for(len(images)))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    counts = (outputs["input_ids"] == image_token_id).sum(axis=1)
    assert len(set(counts.tolist())) > 1  # the un-padded grids differ between aspect ratios


def test_anyres_library_default_pinpoints_at_336(tokenizer):
    """The processor's own defaults (CLIP-336 tiles, LLaVA-NeXT's five pinpoints) against transformers'."""
    ours = ZooLlavaProcessor(image_processor=ZooAnyResImageProcessor(), tokenizer=tokenizer, patch_size=14,
                             vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    assert image_processor.image_grid_pinpoints == ours.image_processor.image_grid_pinpoints
    theirs = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                                vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    images = [random_image(500, 300, 0), random_image(180, 900, 1, "L"), random_image(700, 700, 2, "RGBA")]
    assert_same_outputs(ours, theirs, images, texts_for(len(images)))


def test_several_images_in_one_prompt(tokenizer):
    ours, theirs = processors("llava_next", tokenizer, "clip-default", pinpoints=CUSTOM_PINPOINTS)
    images = [random_image(30, 100, 0), random_image(100, 30, 1), random_image(64, 64, 2)]
    texts = ["USER: <image> and <image>: which is wider? ASSISTANT:", "USER: <image>\nDescribe. ASSISTANT:"]
    assert_same_outputs(ours, theirs, images, texts)


sides = st.integers(min_value=1, max_value=160)


@FAST
@given(height=sides, width=sides, pad=st.booleans(), mode=st.sampled_from(["RGB", "L", "RGBA"]))
def test_fixed_resolution_any_size(tokenizer, height, width, pad, mode):
    ours, theirs = processors("llava", tokenizer, "clip-default", pad=pad)
    assert_same_outputs(ours, theirs, [random_image(height, width, 0, mode)], texts_for(1))


@FAST
@given(height=sides, width=sides, pinpoints=st.sampled_from([PINPOINTS, CUSTOM_PINPOINTS]),
       tower_key=st.sampled_from(["clip-default", "siglip-full"]))  # fmt: skip
def test_anyres_any_size(tokenizer, height, width, pinpoints, tower_key):
    ours, theirs = processors("llava_next", tokenizer, tower_key, pinpoints=pinpoints)
    assert_same_outputs(ours, theirs, [random_image(height, width, 1)], texts_for(1))
