"""LLaVA-specific checks: the papers' shapes and token counts, feature selection, AnyRes geometry."""

from __future__ import annotations

import pytest
import torch

import vlmzoo
from vlmzoo import presets
from vlmzoo.geometry import anyres_grid_shape, anyres_num_tokens, unpadded_region
from helpers import build, make_image, user_prompt


def _meta_model(preset: str):
    with torch.device("meta"):
        return vlmzoo.ZooLlavaForConditionalGeneration(presets.get_config("llava", preset))


def test_llava_15_7b_sizes():
    model = _meta_model("llava-1.5-7b")
    projector = sum(p.numel() for p in model.multi_modal_projector.parameters())
    assert projector == (1024 * 4096 + 4096) + (4096 * 4096 + 4096)  # mlp2x_gelu, 1024 -> 4096 -> 4096
    tower = sum(p.numel() for p in model.vision_tower.parameters())
    assert 303_000_000 < tower < 304_500_000  # CLIP ViT-L/14-336 vision half (~303.5M)
    language = sum(p.numel() for p in model.language_model.parameters()) + model.lm_head.weight.numel()
    assert 6_700_000_000 < language < 6_800_000_000  # Vicuna-7B


def test_paper_token_counts():
    # LLaVA-1.5 at 336 px, patch 14, CLS dropped: 24 * 24 = 576 tokens
    config = presets.get_config("llava", "llava-1.5-7b")
    assert (config.vision_config.image_size // config.vision_config.patch_size) ** 2 == 576
    # LLaVA-NeXT, 672x672 image: the paper's 5 views x 576 = 2880, laid out as 576 base tokens + the
    # 48x48 tile grid (nothing to unpad) + one newline per grid row = 2928
    next_config = presets.get_config("llava", "llava-next-7b")
    assert anyres_num_tokens((672, 672), next_config.image_grid_pinpoints, 336, 14, 576) == 2928
    # a 1008x336 (h x w) portrait image is 3 tiles tall, 1 wide, nothing to unpad: 576 + 72*24 + 72
    assert anyres_grid_shape((1008, 336), next_config.image_grid_pinpoints, 336) == (3, 1)
    assert anyres_num_tokens((1008, 336), next_config.image_grid_pinpoints, 336, 14, 576) == 576 + 72 * 24 + 72


@pytest.mark.parametrize(
    "original, grid, expected",
    [
        ((100, 200), (48, 48), (12, 24, 0, 48)),  # landscape: rows of padding above and below
        ((200, 100), (48, 48), (0, 48, 12, 24)),  # portrait: columns of padding left and right
        ((300, 300), (48, 48), (0, 48, 0, 48)),  # square: nothing to remove
    ],
)
def test_unpadded_region(original, grid, expected):
    assert unpadded_region(original, grid) == expected


def test_processor_token_count_matches_model_features_for_many_sizes():
    model, processor = build(("llava", "tiny-anyres"))
    text = user_prompt(processor, "What is it?")
    for width, height in [(1, 1), (64, 64), (200, 30), (30, 200), (129, 64), (65, 191), (500, 499)]:
        inputs = processor(images=[make_image(width, height)], text=[text], return_tensors="pt")
        (features,) = model.get_image_features(inputs["pixel_values"], image_sizes=inputs["image_sizes"]).pooler_output
        assert features.shape[0] == int((inputs["input_ids"] == model.config.image_token_id).sum()), (width, height)


def test_multi_layer_feature_selection_concatenates_layers():
    model, processor = build(("llava", "tiny"), vision_feature_layer=[-3, -2])
    width = model.config.vision_config.hidden_size
    assert model.multi_modal_projector.linear_1.in_features == 2 * width
    pixels = processor.image_processor(images=[make_image(50, 40)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states
        expected = model.multi_modal_projector(torch.cat([hidden[-3][:, 1:], hidden[-2][:, 1:]], dim=-1))
        torch.testing.assert_close(torch.stack(model.get_image_features(pixels).pooler_output), expected)



def test_get_image_features_honours_per_call_overrides():
    """As transformers' LLaVA: vision_feature_layer / _select_strategy given to the call win over the config."""
    model, processor = build(("llava", "tiny"))
    pixels = processor.image_processor(images=[make_image(50, 40)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model.vision_tower(pixels, output_hidden_states=True).hidden_states
        expected = model.multi_modal_projector(hidden[-1])  # last layer, CLS kept
        features = model.get_image_features(pixels, vision_feature_layer=-1, vision_feature_select_strategy="full")
        default = model.get_image_features(pixels)
    torch.testing.assert_close(torch.stack(features.pooler_output), expected)
    assert default.pooler_output[0].shape[0] == expected.shape[1] - 1  # the config's "default" drops CLS


def test_full_strategy_keeps_the_cls_token():
    model, processor = build(("llava", "tiny"), vision_feature_select_strategy="full")
    processor.vision_feature_select_strategy = "full"
    text = user_prompt(processor, "What is it?")
    inputs = processor(images=[make_image(50, 40)], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16 + 1
    with torch.no_grad():
        (features,) = model(**inputs).image_outputs.pooler_output
        hidden = model.vision_tower(inputs["pixel_values"], output_hidden_states=True).hidden_states[-2]
    torch.testing.assert_close(features, model.multi_modal_projector(hidden)[0])  # CLS row included


def test_an_explicit_image_token_wins_over_the_tokenizers():
    _, processor = build(("llava", "tiny"))
    tokenizer = processor.tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": ["<img>"]})
    tokenizer.image_token = "<image>"
    chosen = type(processor)(image_processor=processor.image_processor, tokenizer=tokenizer, image_token="<img>")
    assert chosen.image_token == "<img>"
    assert chosen.image_token_id == tokenizer.convert_tokens_to_ids("<img>")
    assert type(processor)(image_processor=processor.image_processor, tokenizer=tokenizer).image_token == "<image>"


def test_a_per_call_pinpoint_override_is_counted_with_the_pinpoints_used():
    model, processor = build(("llava", "tiny-anyres"))
    tile = model.config.vision_config.image_size
    text = user_prompt(processor, "What is it?")
    image = make_image(200, 60)
    default = processor(images=[image], text=[text], return_tensors="pt")
    override = [[tile, tile * 2]]  # one row of two tiles (the preset's best fit for this image is three)
    wide = processor(images=[image], text=[text], return_tensors="pt", image_grid_pinpoints=override)
    assert wide["pixel_values"].shape[1] == 3  # base view + 2 tiles
    counted = processor._get_num_multimodal_tokens(image_sizes=[(60, 200)], image_grid_pinpoints=override)
    placeholders = int((wide["input_ids"] == model.config.image_token_id).sum())
    assert counted.num_image_tokens == [placeholders]
    assert placeholders != int((default["input_ids"] == model.config.image_token_id).sum())
    # a model configured with the same pinpoints makes exactly that many embeddings
    same, _ = build(("llava", "tiny-anyres"), image_grid_pinpoints=override)
    (features,) = same.get_image_features(wide["pixel_values"], image_sizes=wide["image_sizes"]).pooler_output
    assert features.shape[0] == placeholders


@pytest.mark.parametrize(
    "pinpoints, fragment",
    [
        ([], "must list at least one"),
        ([[64, 96]], r"positive multiples of the tile size 64; got \[64, 96\]"),
        ([[64.0, 128]], r"got \[64.0, 128\]"),
        ([["64", "128"]], r"got \['64', '128'\]"),
        ([[64, 128, 64]], r"\[height, width\]"),
        ([[0, 64]], r"got \[0, 64\]"),
    ],
)
def test_impossible_pinpoints_are_refused_by_config_and_image_processor(pinpoints, fragment):
    with pytest.raises(ValueError, match=fragment):
        presets.get_config("llava", "tiny-anyres", image_grid_pinpoints=pinpoints)
    _, processor = build(("llava", "tiny-anyres"))
    with pytest.raises(ValueError, match=fragment):
        processor.image_processor(make_image(40, 40), image_grid_pinpoints=pinpoints)


def test_image_seq_length_is_computed_and_checked():
    assert presets.get_config("llava", "tiny").image_seq_length == 16  # (64 / 16)^2 patches, CLS dropped
    assert presets.get_config("llava", "tiny", vision_feature_select_strategy="full").image_seq_length == 17
    shuffled = presets.get_config("llava", "tiny", projector_type="pixel_shuffle", projector_config={"ratio": 2})
    assert shuffled.image_seq_length == 4
    assert vlmzoo.ZooLlavaConfig().image_seq_length == 576  # LLaVA 1.5: CLIP ViT-L/14 at 336 px
    with pytest.raises(ValueError, match="image_seq_length=20 disagrees with the 16 tokens one view makes"):
        presets.get_config("llava", "tiny", image_seq_length=20)


@pytest.mark.parametrize("scaling", [{"rope_type": "linear", "factor": 4.0}, {"rope_type": "dynamic", "factor": 4.0}])
def test_rope_scaling_of_the_text_config_reaches_the_language_model(scaling):
    """transformers' rope-scaling tests pick the base model by its native class name; this is their check here:
    the text config's rope parameters drive the language model's rotary module, as in the LM built alone."""
    from transformers import AutoModel

    text = presets.get_config("llava", "tiny").text_config.to_dict()
    text["rope_parameters"] = {"rope_theta": 10000.0, **scaling}
    model, _ = build(("llava", "tiny"), text_config=text)
    alone = AutoModel.from_config(model.config.text_config)
    rotary = model.language_model.rotary_emb
    assert rotary.rope_type == scaling["rope_type"] == alone.rotary_emb.rope_type
    torch.testing.assert_close(rotary.inv_freq, alone.rotary_emb.inv_freq, rtol=0, atol=0)
    positions = torch.arange(3 * model.config.text_config.max_position_embeddings)[None]
    x = torch.ones(1, dtype=torch.float32)
    cos, _ = rotary(x, positions)
    plain_cos, _ = AutoModel.from_config(presets.get_config("llava", "tiny").text_config).rotary_emb(x, positions)
    assert not torch.allclose(cos, plain_cos)  # the scaling changes the long-range frequencies
