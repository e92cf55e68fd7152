"""Bad and unusual input: every failure is a clear ValueError/TypeError, every odd image mode converts right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vlmzoo
from vlmzoo import presets
from helpers import build, make_image, two_prompt_batch, user_prompt


def _pixels(processor, image):
    return processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]


def test_more_images_than_placeholders_raises(case):
    _, processor = build(case)
    text = user_prompt(processor, "What is it?")
    with pytest.raises(ValueError, match="number of images"):
        processor(images=[make_image(32, 32), make_image(32, 32, seed=3)], text=[text], return_tensors="pt")
    if processor.image_token in text:
        with pytest.raises(ValueError, match="no images were passed"):
            processor(text=[text], return_tensors="pt")
    else:  # the Q-Former families place the image tokens themselves: text alone gets none
        assert not (processor(text=[text], return_tensors="pt")["input_ids"] == processor.image_token_id).any()


@pytest.mark.parametrize("size", [(0, 0), (0, 10), (10, 0)])
def test_empty_image_raises(case, size):
    _, processor = build(case)
    with pytest.raises(ValueError, match="empty image"):
        processor.image_processor(images=[Image.new("RGB", size)])
    with pytest.raises(ValueError, match="empty image"):
        processor.image_processor(images=[np.zeros((size[1], size[0], 3), dtype=np.uint8)])


def test_one_pixel_image_runs_through_the_model(case):
    model, processor = build(case)
    text = user_prompt(processor, "What color is it?")
    inputs = processor(images=[Image.new("RGB", (1, 1), (200, 10, 10))], text=[text], return_tensors="pt")
    logits = model(**inputs).logits
    assert torch.isfinite(logits).all()
    # a 1x1 red image is red everywhere after resizing: every pixel normalises to the same value per channel
    pixel_values = inputs["pixel_values"]
    if pixel_values.dim() == 2:  # packed patches (native resolution): (patches, channels * frames * patch^2)
        pixels = pixel_values.reshape(pixel_values.shape[0], 3, -1).transpose(0, 1).flatten(1)  # (3, values)
        assert torch.allclose(pixels, pixels[:, :1].expand_as(pixels))
    else:  # views: (..., 3, H, W)
        pixels = pixel_values.reshape(-1, 3, *pixel_values.shape[-2:])[0]
        assert torch.allclose(pixels, pixels[:, :1, :1].expand_as(pixels))


def test_grayscale_palette_and_rgb_agree(case):
    _, processor = build(case)
    rgb = make_image(50, 30, seed=4)
    gray = rgb.convert("L")
    torch.testing.assert_close(_pixels(processor, gray), _pixels(processor, gray.convert("RGB")))
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    torch.testing.assert_close(_pixels(processor, palette), _pixels(processor, palette.convert("RGB")))


def test_rgba_is_composited_onto_white(case):
    _, processor = build(case)
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))  # fully transparent red
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    torch.testing.assert_close(_pixels(processor, rgba), _pixels(processor, white))


def test_sixteen_bit_images_are_scaled_not_clipped(case):
    _, processor = build(case)
    levels = np.linspace(0, 65535, 48 * 32).reshape(32, 48).astype(np.uint16)
    sixteen = Image.fromarray(levels)
    assert sixteen.mode == "I;16"
    eight = Image.fromarray(np.round(levels / 257.0).astype(np.uint8)).convert("RGB")
    torch.testing.assert_close(_pixels(processor, sixteen), _pixels(processor, eight))


def test_ambiguous_modes_are_refused(case):
    _, processor = build(case)
    with pytest.raises(ValueError, match="unsupported image mode 'F'"):
        processor.image_processor(images=[Image.new("F", (8, 8))])
    with pytest.raises(ValueError, match="unsupported image mode 'I'"):
        processor.image_processor(images=[Image.new("I", (8, 8))])


def test_bad_arrays_and_types(case):
    _, processor = build(case)
    with pytest.raises(ValueError, match="channels"):
        processor.image_processor(images=[np.zeros((10, 12, 5), dtype=np.uint8)])
    with pytest.raises(ValueError, match=r"must be \(H, W\), \(H, W, C\) or \(C, H, W\)|flat list of images"):
        processor.image_processor(images=[np.zeros((2, 3, 10, 12, 3), dtype=np.uint8)])
    with pytest.raises((TypeError, ValueError), match="not an image|str"):
        processor.image_processor(images=["not an image"])


def test_wrong_pixel_shapes_raise(case):
    model, processor = build(case)
    batch, _, _ = two_prompt_batch(processor)
    pixel_values = batch["pixel_values"]
    if pixel_values.dim() == 2:  # packed patches: a cut patch, an extra axis, patches missing for the grids
        wrong = [pixel_values[:, :5], pixel_values.unsqueeze(0), pixel_values[:5]]
    else:  # views: one channel, an extra axis, a cut side
        wrong = [pixel_values[..., :1, :, :], pixel_values.unsqueeze(0), pixel_values[..., :5]]
    for bad in wrong:
        with pytest.raises(ValueError, match=r"pixel_values must be|takes views of shape|image_sizes must be|"
                                             r"pixel_values holds"):  # fmt: skip
            model(**{**batch, "pixel_values": bad})


def test_fixed_resolution_rejects_wrong_image_size():
    model, processor = build(("llava", "tiny"))
    batch, _, _ = two_prompt_batch(processor)
    with pytest.raises(ValueError, match=r"takes views of shape \(num_views, 3, 64, 64\); got \(2, 3, 32, 32\)"):
        model(**{**batch, "pixel_values": torch.zeros(2, 3, 32, 32)})


def test_anyres_needs_image_sizes():
    model, processor = build(("llava", "tiny-anyres"))
    batch, _, _ = two_prompt_batch(processor)
    with pytest.raises(ValueError, match="image_sizes"):
        model(**{k: v for k, v in batch.items() if k != "image_sizes"})


def test_unknown_registry_keys_name_the_valid_ones():
    from vlmzoo.modeling.projectors import PROJECTORS

    valid = ", ".join(PROJECTORS.keys())
    assert {"linear", "mlp2x_gelu", "ln_mlp", "pixel_shuffle", "c_abstractor", "ldp", "perceiver"} <= set(PROJECTORS)
    with pytest.raises(ValueError, match=f"unknown projector 'mlp9x_relu'; valid keys: {valid}"):
        presets.get_config("llava", "tiny", projector_type="mlp9x_relu")
    with pytest.raises(ValueError, match=f"unknown family 'nope'; valid keys: {', '.join(vlmzoo.FAMILIES.keys())}"):
        vlmzoo.get_family("nope")
    with pytest.raises(ValueError, match="valid presets"):
        presets.get_config("llava", "huge-imaginary")
    with pytest.raises(ValueError, match="vision_feature_select_strategy"):
        _, processor = build(("llava", "tiny"))
        type(processor)(processor.image_processor, processor.tokenizer, vision_feature_select_strategy="cls_only")


def test_impossible_resolution_settings_raise():
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        presets.get_config("llava", "tiny", image_grid_pinpoints=[[64, 100]])
    _, processor = build(("llava", "tiny-anyres"))
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        processor.image_processor(images=[make_image(30, 30)], image_grid_pinpoints=[])
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        processor.image_processor(images=[make_image(30, 30)], image_grid_pinpoints=[[64, 96]])
    with pytest.raises(ValueError, match="unknown components"):
        presets.get_config("llava", "tiny", training_stages={"align": ["projector_typo"]})
