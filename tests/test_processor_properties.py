"""Property-based processor checks every family inherits: whatever the images, the token count is the model's.

For generated batches (image sizes from 1 px to very wide or very tall, PIL modes and array forms, one to three
samples, images given flat or per sample) the processor's placeholder count of every sample equals the number
of visual embeddings the model makes for that sample's images (``get_image_features(...).pooler_output``),
and the shapes and dtypes hold. Parametrised over the family table's tiny presets; the number of generated
cases comes from the Hypothesis profile (``tests/conftest.py``: a few by default, 1,000 per family with
``HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from vlmzoo.processing.image_transforms import MAX_ASPECT_RATIO

from helpers import build, user_prompt

MODES = ["RGB", "L", "RGBA", "LA", "P", "CMYK", "1", "I;16"]
FORMS = ["pil", "uint8-array", "float-array", "tensor", "2d-array"]
QUESTIONS = ["What color is the shape?", "Where is it?", "Describe the image in detail, please."]


@functools.lru_cache(maxsize=None)
def _built(case):
    model, processor = build(case)
    return model, processor


def _image(width: int, height: int, mode: str, form: str, seed: int):
    """One image of ``mode`` (or an array form of an RGB / grayscale one)."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if form == "pil":
        return Image.fromarray(rgb).convert(mode)
    if form == "uint8-array":
        return rgb
    if form == "float-array":
        return rgb.astype(np.float32) / 255
    if form == "tensor":
        return torch.from_numpy(rgb).permute(2, 0, 1)  # channels first
    return rgb[..., 0]  # (H, W)


sides = st.one_of(st.integers(1, 24), st.integers(25, 160), st.sampled_from([1, 2, 3, 4, 300]))
images = st.builds(
    _image,
    width=sides,
    height=sides,
    mode=st.sampled_from(MODES),
    form=st.sampled_from(FORMS),
    seed=st.integers(0, 2**16),
)


@given(batch_images=st.lists(images, min_size=1, max_size=3), nested=st.booleans(), data=st.data())
def test_placeholders_equal_the_visual_embeddings(case, batch_images, nested, data):
    model, processor = _built(case)
    questions = data.draw(st.lists(st.sampled_from(QUESTIONS), min_size=len(batch_images), max_size=len(batch_images)))
    texts = [user_prompt(processor, question) for question in questions]
    given_images = [[image] for image in batch_images] if nested else list(batch_images)
    if any(_ambiguous(image) for image in batch_images):
        # e.g. a 3 px tall (3, W, 3) array: refused, never silently read with its axes swapped
        with pytest.raises(ValueError, match="reads as channels-first and as channels-last"):
            processor(images=given_images, text=texts, return_tensors="pt", padding=True)
        return
    try:
        batch = processor(images=given_images, text=texts, return_tensors="pt", padding=True)
    except ValueError as error:
        # native resolution keeps each image's shape: a sliver (1 x 300) is refused by name, never squashed
        if "aspect ratio" not in str(error):
            raise
        ratios = [max(_size(image)) / min(_size(image)) for image in batch_images]
        assert max(ratios) > MAX_ASPECT_RATIO, (error, ratios)
        return

    input_ids, pixel_values = batch["input_ids"], batch["pixel_values"]
    assert input_ids.dtype == torch.long and batch["attention_mask"].shape == input_ids.shape
    assert pixel_values.dtype == torch.float32
    sizes = [tuple(np.asarray(_size(image))) for image in batch_images]
    hook = processor._get_num_multimodal_tokens(image_sizes=sizes)
    if pixel_values.dim() == 2:  # native resolution: every image's patches packed, as many as the hook counts
        assert pixel_values.shape[0] == sum(hook.num_image_patches)
    else:  # one (stack of views) per image
        assert pixel_values.shape[0] == len(batch_images)
    assert torch.isfinite(pixel_values).all()

    image_inputs = {key: value for key, value in batch.items() if key in model.model.family_input_names}
    with torch.no_grad():
        per_image = model.get_image_features(pixel_values, **image_inputs).pooler_output
    assert len(per_image) == len(batch_images)
    width = model.config.text_config.hidden_size
    for features in per_image:
        assert features.dim() == 2 and features.shape[1] == width and features.dtype == torch.float32
    # one image per sample here: each sample's placeholders are exactly its image's embeddings
    placeholders = (input_ids == model.config.image_token_id).sum(dim=1).tolist()
    assert placeholders == [features.shape[0] for features in per_image]
    # and the processor's counting hook agrees with the pixels it made
    assert list(hook.num_image_tokens) == placeholders


def _ambiguous(image) -> bool:
    """A 3-D array whose first and last axes both look like a channel axis (1, 3 or 4 long)."""
    return (
        not isinstance(image, Image.Image) and image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] in (1, 3, 4)
    )


def _size(image) -> tuple[int, int]:
    """(height, width) of an image in any of the forms above."""
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape
    return (shape[1], shape[2]) if shape[0] == 3 and isinstance(image, torch.Tensor) else (shape[0], shape[1])
