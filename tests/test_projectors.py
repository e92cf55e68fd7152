"""The projector zoo: each projector against a plain loop-based formula, its declared token count, its options,
and every projector picked in ``ZooLlavaConfig`` training, saving and reloading end to end (tiny, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForImageTextToText, AutoProcessor

import vlmzoo
from vlmzoo import ZooAnyResImageProcessor, ZooLlavaProcessor, presets
from vlmzoo.modeling.projectors import PROJECTORS, build_projector, pixel_shuffle
from vlmzoo.geometry import PROJECTOR_TOKENS, projector_keeps_grid, projector_num_tokens

from helpers import make_image, user_prompt

ZOO = ["c_abstractor", "ldp", "linear", "ln_mlp", "mlp2x_gelu", "perceiver", "pixel_shuffle"]
# small options for each projector; the tiny LLaVA tower gives a 4x4 grid (16 tokens) per view
TINY_OPTIONS = {
    "linear": None,
    "mlp2x_gelu": None,
    "ln_mlp": None,
    "pixel_shuffle": {"ratio": 2},
    "c_abstractor": {"num_queries": 4, "depth": 1},
    "ldp": None,
    "perceiver": {"num_latents": 6, "depth": 2, "num_heads": 2, "head_dim": 8},
}
# image tokens per 64 px view of the tiny preset, counted by hand
TINY_TOKENS = {
    "linear": 16, "mlp2x_gelu": 16, "ln_mlp": 16, "pixel_shuffle": 4, "c_abstractor": 4, "ldp": 4, "perceiver": 6
}
GRID_PROJECTORS = ["c_abstractor", "ldp", "pixel_shuffle"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


# ----- plain reference formulas --------------------------------------------------------------------------
def gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def silu(x):
    return x / (1 + torch.exp(-x))


def hardswish(x):
    return x * (x + 3).clamp(0, 6) / 6


def hardsigmoid(x):
    return (x + 3).clamp(0, 6) / 6


def layer_norm_last(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def layer_norm_channels(grid, norm):
    """LayerNorm over C of a (B, C, H, W) map, written out."""
    mean = grid.mean(1, keepdim=True)
    var = ((grid - mean) ** 2).mean(1, keepdim=True)
    return (grid - mean) / torch.sqrt(var + norm.eps) * norm.weight[:, None, None] + norm.bias[:, None, None]


def linear(x, layer):
    return x @ layer.weight.T + (layer.bias if layer.bias is not None else 0)


def depthwise_conv3x3(grid, weight, stride):
    """Depthwise 3x3 convolution, zero padding 1, by an explicit loop over output positions."""
    batch, channels, height, width = grid.shape
    padded = F.pad(grid, (1, 1, 1, 1))
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    out = torch.zeros(batch, channels, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i * stride : i * stride + 3, j * stride : j * stride + 3]  # (B, C, 3, 3)
            out[:, :, i, j] = (window * weight[:, 0]).sum((-1, -2))
    return out


def pointwise_conv(grid, conv):
    """1x1 convolution as a matrix product over channels."""
    out = torch.einsum("oc,bchw->bohw", conv.weight[:, :, 0, 0], grid)
    return out + conv.bias[:, None, None] if conv.bias is not None else out


def squeeze_excitation(grid, se, act, gate):
    pooled = grid.mean((2, 3), keepdim=True)
    return grid * gate(pointwise_conv(act(pointwise_conv(pooled, se.fc_1)), se.fc_2))


def adaptive_average_pool(grid, out_side):
    """Average over bins [floor(i * H / q), ceil((i + 1) * H / q)) in both directions, written out."""
    batch, channels, side, _ = grid.shape
    out = torch.zeros(batch, channels, out_side, out_side)
    for i in range(out_side):
        top, bottom = (i * side) // out_side, -(-((i + 1) * side) // out_side)
        for j in range(out_side):
            left, right = (j * side) // out_side, -(-((j + 1) * side) // out_side)
            total = torch.zeros(batch, channels)
            for y in range(top, bottom):
                for x in range(left, right):
                    total += grid[:, :, y, x]
            out[:, :, i, j] = total / ((bottom - top) * (right - left))
    return out


def to_grid(tokens, side):
    views, _, channels = tokens.shape
    grid = torch.zeros(views, channels, side, side)
    for index in range(side * side):
        grid[:, :, index // side, index % side] = tokens[:, index]
    return grid


def to_tokens(grid):
    views, channels, height, width = grid.shape
    return torch.stack([grid[:, :, index // width, index % width] for index in range(height * width)], dim=1)


def _randomise(module, seed=0):
    """Non-trivial values for every parameter (norm weights and biases included), fp32."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return module.float().eval()


# ----- registry and token counts -------------------------------------------------------------------------
def test_both_registries_list_the_zoo_and_the_tests_cover_it():
    assert PROJECTORS.keys() == PROJECTOR_TOKENS.keys() == ZOO == sorted(TINY_OPTIONS)
    assert [key for key in ZOO if projector_keeps_grid(key)] == ["linear", "ln_mlp", "mlp2x_gelu"]


COUNT_CASES = [
    (projector, TINY_OPTIONS[projector], 16, TINY_TOKENS[projector]) for projector in ZOO
] + [
    ("pixel_shuffle", {"ratio": 3}, 36, 4),
    ("pixel_shuffle", {"ratio": 1}, 9, 9),
    ("pixel_shuffle", {"ratio": 2}, 64, 16),
    ("ldp", None, 36, 9),
    ("ldp", None, 25, 9),  # odd side 5 rounds up to 3
    ("ldp", None, 9, 4),
    ("c_abstractor", {"num_queries": 9, "depth": 1, "hidden_size": 10}, 25, 9),
    ("perceiver", {"num_latents": 3, "depth": 1, "num_heads": 1, "head_dim": 4}, 7, 3),  # any count, not a square
    ("linear", None, 17, 17),
    ("ln_mlp", None, 5, 5),
]


@pytest.mark.parametrize(("projector", "options", "tokens", "expected"), COUNT_CASES)
def test_module_output_length_is_the_declared_count(projector, options, tokens, expected):
    assert projector_num_tokens(projector, tokens, options) == expected
    torch.manual_seed(0)
    module = build_projector(projector, 8, 12, **(options or {})).eval()
    assert module.num_output_tokens(tokens) == expected
    with torch.no_grad():
        out = module(torch.randn(2, tokens, 8))
    assert out.shape == (2, expected, 12)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("projector", GRID_PROJECTORS)
def test_grid_projectors_refuse_a_token_count_that_is_not_a_square(projector):
    module = build_projector(projector, 8, 12, **(TINY_OPTIONS[projector] or {}))
    with pytest.raises(ValueError, match=f"projector '{projector}' needs a square grid of tokens, got 17.*"
                                         f'vision_feature_select_strategy="default"'):
        module(torch.randn(1, 17, 8))
    with pytest.raises(ValueError, match="needs a square grid of tokens, got 17"):
        projector_num_tokens(projector, 17, TINY_OPTIONS[projector])


# ----- each projector against its formula -----------------------------------------------------------------
def test_ln_mlp_matches_its_formula():
    module = _randomise(build_projector("ln_mlp", 6, 5, layer_norm_eps=1e-4))
    x = torch.randn(2, 4, 6)
    expected = torch.zeros(2, 4, 5)
    for view in range(2):
        for token in range(4):
            normed = layer_norm_last(x[view, token], module.norm)
            expected[view, token] = linear(gelu(linear(normed, module.linear_1)), module.linear_2)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, **TOL)
    assert [name for name, _ in module.named_children()] == ["norm", "linear_1", "act", "linear_2"]


@pytest.mark.parametrize(("side", "ratio"), [(6, 1), (6, 2), (6, 3), (4, 4)])
def test_pixel_shuffle_matches_explicit_loops(side, ratio):
    channels = 3
    x = torch.randn(2, side * side, channels)
    blocks = side // ratio
    expected = torch.zeros(2, blocks * blocks, ratio * ratio * channels)
    for view in range(2):
        for bi in range(blocks):
            for bj in range(blocks):
                for di in range(ratio):
                    for dj in range(ratio):
                        for c in range(channels):
                            source = (bi * ratio + di) * side + (bj * ratio + dj)
                            expected[view, bi * blocks + bj, (di * ratio + dj) * channels + c] = x[view, source, c]
    torch.testing.assert_close(pixel_shuffle(x, ratio), expected, rtol=0, atol=0)

    module = _randomise(build_projector("pixel_shuffle", channels, 4, ratio=ratio))
    mlp = torch.stack([
        torch.stack([linear(gelu(linear(layer_norm_last(token, module.norm), module.linear_1)), module.linear_2)
                     for token in view])
        for view in expected
    ])
    with torch.no_grad():
        torch.testing.assert_close(module(x), mlp, **TOL)


def _reference_conv_norm_act(grid, block, act=None, stride=1):
    """ConvNormAct: 1x1 as a matrix product, 3x3 depthwise by loops; LayerNorm over channels; act."""
    weight = block.conv.weight
    out = pointwise_conv(grid, block.conv) if weight.shape[-1] == 1 else depthwise_conv3x3(grid, weight, stride)
    out = layer_norm_channels(out, block.norm)
    return act(out) if act is not None else out


def _reference_regnet_bottleneck(grid, block):
    out = _reference_conv_norm_act(grid, block.conv_1, silu)
    out = _reference_conv_norm_act(out, block.conv_2, silu)
    out = squeeze_excitation(out, block.squeeze_excitation, silu, torch.sigmoid)
    out = _reference_conv_norm_act(out, block.conv_3)
    shortcut = grid if isinstance(block.shortcut, torch.nn.Identity) else _reference_conv_norm_act(grid, block.shortcut)
    return silu(out + shortcut)


@pytest.mark.parametrize(("side", "num_queries", "hidden_size"), [(5, 4, 10), (4, 4, None), (6, 9, 16)])
def test_c_abstractor_matches_the_reference(side, num_queries, hidden_size):
    module = _randomise(
        build_projector("c_abstractor", 8, 6, num_queries=num_queries, depth=2, hidden_size=hidden_size)
    )
    x = torch.randn(2, side * side, 8)
    grid = to_grid(x, side)
    for block in module.stage_1:
        grid = _reference_regnet_bottleneck(grid, block)
    grid = adaptive_average_pool(grid, math.isqrt(num_queries))
    for block in module.stage_2:
        grid = _reference_regnet_bottleneck(grid, block)
    expected = linear(silu(linear(to_tokens(grid), module.readout_1)), module.readout_2)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected, **TOL)
    assert isinstance(module.stage_1[0].shortcut, torch.nn.Identity) == (hidden_size is None)
    # RegNet's squeeze-excitation width: a quarter of the block's input width
    hidden = hidden_size or 8
    assert module.stage_1[0].squeeze_excitation.fc_1.out_channels == 2
    assert module.stage_2[0].squeeze_excitation.fc_1.out_channels == round(hidden / 4)


def test_adaptive_pooling_bins_overlap_as_written():
    # 5 -> 2: bins [0, 3) and [2, 5), so the middle row / column counts twice
    grid = torch.arange(25.0).view(1, 1, 5, 5)
    pooled = adaptive_average_pool(grid, 2)
    assert pooled[0, 0, 0, 0].item() == pytest.approx(sum(r * 5 + c for r in range(3) for c in range(3)) / 9)
    torch.testing.assert_close(torch.nn.AdaptiveAvgPool2d(2)(grid), pooled, rtol=0, atol=1e-6)


def _reference_inverted_residual(grid, block, stride):
    out = _reference_conv_norm_act(grid, block.depthwise, hardswish, stride=stride)
    out = squeeze_excitation(out, block.squeeze_excitation, torch.relu, hardsigmoid)
    out = _reference_conv_norm_act(out, block.pointwise)
    return out + grid if stride == 1 else out


@pytest.mark.parametrize("side", [4, 5])
def test_ldp_matches_the_reference(side):
    module = _randomise(build_projector("ldp", 6, 16))
    x = torch.randn(2, side * side, 6)
    tokens = linear(gelu(linear(x, module.linear_1)), module.linear_2)
    grid = _reference_inverted_residual(to_grid(tokens, side), module.block_1, stride=1)
    grid = _reference_inverted_residual(grid, module.block_2, stride=2)
    assert grid.shape[-1] == (side + 1) // 2
    with torch.no_grad():
        torch.testing.assert_close(module(x), to_tokens(grid), **TOL)
    assert module.block_1.squeeze_excitation.fc_1.out_channels == 8  # MobileNet rounding of 16 // 4 up to 8


def _reference_perceiver(module, x, num_heads, head_dim):
    views = x.shape[0]
    latents = module.latents.unsqueeze(0).expand(views, -1, -1)
    for layer in module.layers:
        attention = layer.attention
        features = layer_norm_last(x, attention.norm_features)
        normed = layer_norm_last(latents, attention.norm_latents)
        context = torch.cat([features, normed], dim=1)
        query = linear(normed, attention.q_proj)
        key, value = linear(context, attention.k_proj), linear(context, attention.v_proj)
        mixed = torch.zeros_like(query)
        for view in range(views):
            for head in range(num_heads):
                part = slice(head * head_dim, (head + 1) * head_dim)
                for latent in range(latents.shape[1]):
                    scores = torch.stack([
                        (query[view, latent, part] * key[view, source, part]).sum() / math.sqrt(head_dim)
                        for source in range(context.shape[1])
                    ])
                    weights = torch.exp(scores - scores.max())
                    weights = weights / weights.sum()
                    mixed[view, latent, part] = (weights[:, None] * value[view, :, part]).sum(0)
        latents = latents + linear(mixed, attention.o_proj)
        feed_forward = layer.feed_forward
        latents = latents + linear(
            gelu(linear(layer_norm_last(latents, feed_forward.norm), feed_forward.linear_1)), feed_forward.linear_2
        )
    return linear(layer_norm_last(latents, module.norm), module.linear_out)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_perceiver_matches_explicit_softmax_per_latent(implementation):
    module = _randomise(build_projector("perceiver", 8, 5, num_latents=3, depth=2, num_heads=2, head_dim=4))
    for layer in module.layers:
        layer.attention.attn_implementation = implementation
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        expected = _reference_perceiver(module, x, num_heads=2, head_dim=4)
        torch.testing.assert_close(module(x), expected, **TOL)


# ----- options --------------------------------------------------------------------------------------------
VALID_OPTIONS = {
    "linear": "none \\(it takes no options\\)",
    "mlp2x_gelu": "none \\(it takes no options\\)",
    "ln_mlp": "layer_norm_eps",
    "pixel_shuffle": "layer_norm_eps, ratio",
    "c_abstractor": "depth, hidden_size, num_queries",
    "ldp": "none \\(it takes no options\\)",
    "perceiver": "depth, ff_mult, head_dim, layer_norm_eps, num_heads, num_latents",
}


@pytest.mark.parametrize("projector", ZOO)
def test_unknown_options_name_the_projector_and_its_valid_options(projector):
    message = f"projector '{projector}' got unknown options \\['bogus'\\]; valid options: {VALID_OPTIONS[projector]}$"
    with pytest.raises(ValueError, match=message):
        build_projector(projector, 8, 8, bogus=1)
    with pytest.raises(ValueError, match=message):
        presets.get_config("llava", "tiny", projector_type=projector, projector_config={"bogus": 1})


@pytest.mark.parametrize(
    ("projector", "options", "message"),
    [
        ("pixel_shuffle", {"ratio": 0}, "option ratio must be an integer >= 1, got 0"),
        ("pixel_shuffle", {"ratio": True}, "option ratio must be an integer >= 1, got True"),
        ("pixel_shuffle", {"ratio": 2.0}, "option ratio must be an integer >= 1, got 2.0"),
        ("pixel_shuffle", {"ratio": 3}, "image_size 64 / patch_size 16: .*ratio 3 must divide the side of the 4x4"),
        ("pixel_shuffle", {"layer_norm_eps": -1.0}, "option layer_norm_eps must be a positive number"),
        ("c_abstractor", {"num_queries": 5}, "num_queries must be a perfect square .*got 5"),
        ("c_abstractor", {"depth": 0}, "option depth must be an integer >= 1"),
        ("c_abstractor", {"hidden_size": "big"}, "option hidden_size must be an integer >= 1, got 'big'"),
        ("perceiver", {"num_latents": 0}, "option num_latents must be an integer >= 1"),
        ("perceiver", {"num_heads": -2}, "option num_heads must be an integer >= 1"),
        ("mlp9x_relu", None, "unknown projector 'mlp9x_relu'; valid keys: " + ", ".join(ZOO)),
    ],
)
def test_bad_option_values_raise_in_the_config(projector, options, message):
    with pytest.raises(ValueError, match=message):
        presets.get_config("llava", "tiny", projector_type=projector, projector_config=options)


@pytest.mark.parametrize("projector", GRID_PROJECTORS + ["perceiver"])
def test_anyres_refuses_grid_changing_projectors(projector):
    with pytest.raises(ValueError, match=f"projector '{projector}' changes the token grid, but AnyRes"):
        presets.get_config("llava", "tiny-anyres", projector_type=projector, projector_config=TINY_OPTIONS[projector])
    tokenizer = presets.build_tiny_tokenizer()
    image_processor = ZooAnyResImageProcessor(image_grid_pinpoints=[[64, 128]], size={"shortest_edge": 64},
                                              crop_size={"height": 64, "width": 64})
    with pytest.raises(ValueError, match=f"projector '{projector}' changes the token grid, which AnyRes"):
        ZooLlavaProcessor(image_processor, tokenizer, patch_size=16, projector_type=projector)


def test_anyres_works_with_the_grid_keeping_ln_mlp():
    config = presets.get_config("llava", "tiny-anyres", projector_type="ln_mlp")
    processor = presets.get_processor("llava", "tiny-anyres", config)
    torch.manual_seed(0)
    model = vlmzoo.ZooLlavaForConditionalGeneration(config).eval()
    image, text = make_image(40, 100, seed=2), user_prompt(processor, "Where?")
    batch = processor(images=[image], text=[text], return_tensors="pt")
    with torch.no_grad():
        output = model(**batch)
    placed = output.image_outputs.pooler_output[0].shape[0]
    assert placed == (batch["input_ids"] == config.image_token_id).sum().item() > 16
    assert type(model.multi_modal_projector).__name__ == "LayerNormMlpProjector"


def test_a_cls_token_reaching_a_grid_projector_is_refused_with_the_fix():
    # the config counts the tokens one view makes (image_seq_length), so it refuses the pair up front
    with pytest.raises(ValueError, match='got 17: .*vision_feature_select_strategy="default"'):
        presets.get_config("llava", "tiny", projector_type="pixel_shuffle", vision_feature_select_strategy="full")
    # a processor built by hand for that pair refuses at the first image, the projector module at its first input
    config = presets.get_config("llava", "tiny", projector_type="pixel_shuffle")
    processor = presets.get_processor("llava", "tiny", config)
    processor.vision_feature_select_strategy = "full"
    assert processor.num_additional_image_tokens == 1  # CLIP's CLS: 17 tokens
    with pytest.raises(ValueError, match='got 17: .*vision_feature_select_strategy="default"'):
        processor(images=[make_image(64, 64)], text=[user_prompt(processor, "Where?")], return_tensors="pt")
    model = vlmzoo.ZooLlavaForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match='got 17: .*vision_feature_select_strategy="default"'):
        model.get_image_features(pixel_values=torch.zeros(1, 3, 64, 64), vision_feature_select_strategy="full")


# ----- end to end: pick it in the config, train, save, reload ------------------------------------------------
@pytest.mark.parametrize("projector", ZOO)
def test_each_projector_trains_saves_and_reloads_end_to_end(projector, tmp_path):
    options = TINY_OPTIONS[projector]
    config = presets.get_config("llava", "tiny", projector_type=projector, projector_config=options)
    processor = presets.get_processor("llava", "tiny", config)
    torch.manual_seed(0)
    model = vlmzoo.ZooLlavaForConditionalGeneration(config).eval()
    images = [make_image(80, 48, seed=1), make_image(40, 100, seed=2)]
    texts = [user_prompt(processor, "What color is the shape?"), user_prompt(processor, "Where is it?")]
    batch = processor(images=images, text=texts, return_tensors="pt", padding=True)

    # the processor's count per image == the hand count == the embeddings the model places there
    counts = (batch["input_ids"] == config.image_token_id).sum(1).tolist()
    assert counts == [TINY_TOKENS[projector]] * 2
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    output = model(**batch, labels=labels)
    hidden = config.text_config.hidden_size
    assert [tuple(f.shape) for f in output.image_outputs.pooler_output] == [(n, hidden) for n in counts]

    vocab = config.text_config.vocab_size
    expected_loss = F.cross_entropy(output.logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
    assert torch.isfinite(output.loss)
    torch.testing.assert_close(output.loss, expected_loss, rtol=1e-6, atol=1e-6)
    output.loss.backward()
    for name, parameter in model.multi_modal_projector.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name

    with torch.no_grad():
        logits = model(**batch).logits
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert reloaded.config.projector_type == projector and reloaded.config.projector_config == options
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, logits, rtol=0, atol=0)
    reloaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert (reloaded_processor.projector_type, reloaded_processor.projector_config) == (projector, options)
    reloaded_batch = reloaded_processor(images=images, text=texts, return_tensors="pt", padding=True)
    torch.testing.assert_close(reloaded_batch["input_ids"], batch["input_ids"], rtol=0, atol=0)


def test_perceiver_latents_missing_from_a_checkpoint_are_initialised(tmp_path):
    from safetensors.torch import load_file, save_file

    config = presets.get_config("llava", "tiny", projector_type="perceiver", projector_config=TINY_OPTIONS["perceiver"])
    model = vlmzoo.ZooLlavaForConditionalGeneration(config)
    key = "model.multi_modal_projector.latents"
    assert 0.5 < model.state_dict()[key].std() < 1.5  # Flamingo's N(0, 1) latents, set by _init_zoo_weights
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert key in weights
    save_file({k: v for k, v in weights.items() if k != key}, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    latents = reloaded.state_dict()[key]
    assert torch.isfinite(latents).all() and 0.5 < latents.std() < 1.5
    assert not torch.equal(latents, model.state_dict()[key])  # freshly drawn, not the saved ones
    other = "model.multi_modal_projector.linear_out.weight"
    torch.testing.assert_close(reloaded.state_dict()[other], model.state_dict()[other], rtol=0, atol=0)
