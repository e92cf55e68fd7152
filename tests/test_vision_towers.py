"""Vision-tower blocks for the high-resolution families (vlmzoo/modeling/vision_towers.py).

Layer-wise ViT with injections (LLaVA-HR, FILA), ConvNeXt stage maps (Mini-Gemini, FILA, LLaVA-HR),
position-table resampling (LLaVA-HR's antialiased bicubic, transformers' interpolate_pos_encoding),
and the explicit extra-token facts. Tiny towers, CPU, fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPVisionConfig,
    ConvNextConfig,
    ConvNextV2Config,
    PreTrainedConfig,
    SiglipVisionConfig,
)

from vlmzoo.modeling.vision_towers import (
    POSITION_INTERPOLATIONS,
    build_vision_tower,
    convnext_stage_feature_maps,
    convnext_stage_shapes,
    resample_position_embeddings,
    resize_vit_position_embeddings,
    run_vit_layerwise,
    vit_parts,
)
from vlmzoo.geometry import TOWER_EXTRA_TOKENS, tower_extra_tokens

IMAGE, PATCH, LAYERS, WIDTH = 32, 8, 4, 32  # 4×4 grid of patches


def vit_config(kind: str, attn_implementation: str = "sdpa") -> PreTrainedConfig:
    common = dict(
        hidden_size=WIDTH, intermediate_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
        image_size=IMAGE, patch_size=PATCH,
    )
    config = CLIPVisionConfig(**common) if kind == "clip" else SiglipVisionConfig(**common)
    config._attn_implementation = attn_implementation
    return config


def build_vit(kind: str, attn_implementation: str = "sdpa", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_vision_tower(vit_config(kind, attn_implementation)).eval()


def pixels(size: int = IMAGE, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


class AddConstant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, hidden_states, side=None):
        return hidden_states + self.value + (0 if side is None else side)


# ---------------------------------------------------------------- layer-wise ViT


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_layerwise_without_injections_reproduces_tower_hidden_states(kind):
    tower = build_vit(kind)
    x = pixels()
    with torch.no_grad():
        reference = tower(x, output_hidden_states=True).hidden_states
        mine = run_vit_layerwise(tower, x)
    assert len(mine) == len(reference) == LAYERS + 1
    for index, (ours, theirs) in enumerate(zip(mine, reference)):
        assert torch.equal(ours, theirs), f"hidden state {index} differs"
    # CLIP's state 0 is after pre_layrnorm, SigLIP has none
    assert (vit_parts(tower).pre_norm is not None) == (kind == "clip")


def test_layerwise_returns_requested_indices_in_order_and_stops_early():
    tower = build_vit("clip")
    x = pixels()
    calls = []
    handles = [layer.register_forward_hook(lambda *_: calls.append(1)) for layer in tower.encoder.layers]
    with torch.no_grad():
        everything = run_vit_layerwise(tower, x)
        calls.clear()
        second_last, first = run_vit_layerwise(tower, x, [-2, 1])
    for handle in handles:
        handle.remove()
    assert len(calls) == LAYERS - 1  # the last layer is not run when hidden_states[-2] is the deepest asked
    assert torch.equal(second_last, everything[LAYERS - 1]) and torch.equal(first, everything[1])
    with pytest.raises(ValueError, match="out of range"):
        run_vit_layerwise(tower, x, LAYERS + 1)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_injection_changes_what_later_layers_see(kind):
    tower = build_vit(kind)
    x = pixels()
    # a constant vector, not a scalar: a scalar shift passes unseen through the pre-LN layers' LayerNorm
    at, value = 2, torch.linspace(-1.0, 1.0, WIDTH)
    with torch.no_grad():
        plain = run_vit_layerwise(tower, x)
        injected = run_vit_layerwise(tower, x, injections={at: AddConstant(value)})
        # the manual loop: embeddings (+ pre_layrnorm), layers, a constant added after layer `at`
        manual = [tower.embeddings(x)]
        if kind == "clip":
            manual[0] = tower.pre_layrnorm(manual[0])
        for index, layer in enumerate(tower.encoder.layers, start=1):
            out = layer(manual[-1], None)
            manual.append(out + value if index == at else out)
    for index in range(LAYERS + 1):
        torch.testing.assert_close(injected[index], manual[index], rtol=0, atol=0)
    for index in range(at):
        assert torch.equal(injected[index], plain[index])
    torch.testing.assert_close(injected[at], plain[at] + value, rtol=0, atol=0)
    assert not torch.allclose(injected[at + 1], plain[at + 1] + value, atol=1e-3)  # a layer ran on the new input


def test_side_inputs_shared_and_per_layer():
    tower = build_vit("clip")
    x = pixels()
    side = torch.full((1, 1, WIDTH), 0.5)
    with torch.no_grad():
        plain = run_vit_layerwise(tower, x)
        zero_then_side = run_vit_layerwise(
            tower, x, injections={0: AddConstant(0.0), LAYERS: AddConstant(0.0)}, side_inputs={0: 0.0, LAYERS: side}
        )
        shared = run_vit_layerwise(tower, x, [LAYERS], injections={LAYERS: AddConstant(0.0)}, side_inputs=side)
    assert torch.equal(zero_then_side[0], plain[0])
    torch.testing.assert_close(zero_then_side[LAYERS], plain[LAYERS] + 0.5, rtol=0, atol=0)
    torch.testing.assert_close(shared[0], plain[LAYERS] + 0.5, rtol=0, atol=0)
    with pytest.raises(ValueError, match="must name exactly the injection points"):
        run_vit_layerwise(tower, x, injections={1: AddConstant(0.0)}, side_inputs={2: side})
    with pytest.raises(ValueError, match=r"injection point 5 is not a layer index in \[0, 4\]"):
        run_vit_layerwise(tower, x, injections={5: AddConstant(0.0)})


def test_layerwise_passes_no_attention_mask():
    tower = build_vit("siglip")
    masks = []

    def record(module, args, kwargs):
        masks.append(args[1] if len(args) > 1 else kwargs.get("attention_mask", "absent"))

    for layer in tower.encoder.layers:
        layer.register_forward_pre_hook(record, with_kwargs=True)
    with torch.no_grad():
        run_vit_layerwise(tower, pixels())
    assert masks == [None] * LAYERS


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_layerwise_follows_the_attention_implementation(kind, monkeypatch):
    eager, sdpa = build_vit(kind, "eager"), build_vit(kind, "sdpa", seed=1)
    sdpa.load_state_dict(eager.state_dict())
    sdpa_calls = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(*args, **kwargs):
        sdpa_calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting_sdpa)
    x = pixels()
    shift = AddConstant(torch.linspace(-0.5, 0.5, WIDTH))
    with torch.no_grad():
        by_eager = run_vit_layerwise(eager, x, injections={1: shift})
        assert sdpa_calls == []  # eager attention really ran
        by_sdpa = run_vit_layerwise(sdpa, x, injections={1: shift})
        assert len(sdpa_calls) == LAYERS  # sdpa attention really ran, once per layer
        own_eager = eager(x, output_hidden_states=True).hidden_states
    for ours_eager, ours_sdpa in zip(by_eager, by_sdpa):
        torch.testing.assert_close(ours_eager, ours_sdpa, rtol=1e-5, atol=1e-5)
    assert torch.equal(by_eager[1], own_eager[1] + shift.value)  # eager runner = eager tower up to the injection


def test_vit_parts_rejects_non_vit():
    with pytest.raises(ValueError, match="not a layer-wise runnable ViT"):
        vit_parts(nn.Linear(2, 2))


# ---------------------------------------------------------------- ConvNeXt stages


@pytest.mark.parametrize("config_class", [ConvNextConfig, ConvNextV2Config])
@pytest.mark.parametrize("size", [64, 72])
def test_convnext_stage_maps(config_class, size):
    config = config_class(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    torch.manual_seed(0)
    tower = AutoModel.from_config(config).eval()
    x = pixels(size)
    with torch.no_grad():
        maps = convnext_stage_feature_maps(tower, x)
        own = tower(x, output_hidden_states=True)
    expected = [(8, size // 4, size // 4)]  # stride 4, then /2 per stage
    for channels in (16, 24, 32):
        expected.append((channels, expected[-1][1] // 2, expected[-1][2] // 2))
    assert [tuple(m.shape) for m in maps] == [(2, *shape) for shape in expected]
    assert convnext_stage_shapes(size, size, config.hidden_sizes, config.patch_size) == expected
    assert len(own.hidden_states) == 5  # stem + 4 stages
    for ours, theirs in zip(maps, own.hidden_states[1:]):
        assert torch.equal(ours, theirs)
    assert torch.equal(maps[-1], own.last_hidden_state)  # no head applied to the maps


def test_convnext_stage_shapes_non_square():
    assert convnext_stage_shapes(768, 1536, [192, 384, 768, 1536]) == [
        (192, 192, 384), (384, 96, 192), (768, 48, 96), (1536, 24, 48),
    ]


# ---------------------------------------------------------------- position-embedding resampling


def bicubic_by_hand(table, prefix, side, size, antialias):
    grid = table[prefix:].reshape(side, side, -1).permute(2, 0, 1)[None]  # (1, D, g, g)
    out = F.interpolate(grid, size=size, mode="bicubic", align_corners=False, antialias=antialias)
    return torch.cat([table[:prefix], out[0].permute(1, 2, 0).reshape(size[0] * size[1], -1)])


@pytest.mark.parametrize("new_size", [48, 16, 40])
def test_transformers_mode_matches_clip_interpolate_pos_encoding(new_size):
    tower = build_vit("clip")
    x = pixels(new_size)
    table = tower.embeddings.position_embedding.weight.detach()
    grid = new_size // PATCH
    with torch.no_grad():
        dummy = torch.zeros(1, 1 + grid * grid, WIDTH)
        clip_table = tower.embeddings.interpolate_pos_encoding(dummy, new_size, new_size)[0]  # (1 + g², D)
        expected = tower(x, interpolate_pos_encoding=True, output_hidden_states=True)
    resampled = resample_position_embeddings(table, grid, mode="bicubic", num_prefix_tokens=1)
    assert torch.equal(resampled, clip_table)
    torch.testing.assert_close(resampled, bicubic_by_hand(table, 1, 4, (grid, grid), False), rtol=0, atol=0)
    assert torch.equal(resampled[0], table[0])  # class position untouched

    resized = resize_vit_position_embeddings(copy.deepcopy(tower), new_size, mode="bicubic")
    assert resized.config.image_size == new_size and resized.embeddings.position_ids.shape == (1, 1 + grid * grid)
    assert "embeddings.position_ids" not in resized.state_dict()
    with torch.no_grad():
        got = resized(x, output_hidden_states=True)
    torch.testing.assert_close(got.last_hidden_state, expected.last_hidden_state, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.hidden_states[0], expected.hidden_states[0], rtol=0, atol=1e-6)


def test_transformers_mode_matches_siglip_without_class_position():
    tower = build_vit("siglip")
    x = pixels(48)
    with torch.no_grad():
        expected = tower(x, interpolate_pos_encoding=True).last_hidden_state
        got = resize_vit_position_embeddings(copy.deepcopy(tower), 48, mode="bicubic")(x).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_llava_hr_mode_is_antialiased_bicubic():
    torch.manual_seed(3)
    table = torch.randn(1 + 36, 8)  # class row + 6×6 grid
    for size in [(9, 9), (3, 3), (4, 5)]:
        resampled = resample_position_embeddings(table, size, mode="bicubic_antialias", num_prefix_tokens=1)
        assert resampled.shape == (1 + size[0] * size[1], 8)
        torch.testing.assert_close(resampled, bicubic_by_hand(table, 1, 6, size, True), rtol=0, atol=0)
        assert torch.equal(resampled[0], table[0])  # class position untouched
    down_aa = resample_position_embeddings(table, 3, mode="bicubic_antialias", num_prefix_tokens=1)
    down_plain = resample_position_embeddings(table, 3, mode="bicubic", num_prefix_tokens=1)
    assert (down_aa[1:] - down_plain[1:]).abs().max() > 1e-2  # antialias matters when downsampling
    assert torch.equal(resample_position_embeddings(table, 6, mode="bicubic_antialias", num_prefix_tokens=1), table)
    # bf16 tables are resampled in fp32 and cast back (LLaVA-HR's official code does so)
    half = resample_position_embeddings(table.bfloat16(), 9, mode="bicubic_antialias", num_prefix_tokens=1)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(
        half, bicubic_by_hand(table.bfloat16().float(), 1, 6, (9, 9), True).bfloat16(), rtol=0, atol=0
    )


def test_resized_tower_runs_saves_and_reloads_at_new_size(tmp_path):
    tower = build_vit("clip")
    resize_vit_position_embeddings(tower, 48, mode="bicubic_antialias")
    x = pixels(48)
    with torch.no_grad():
        out = tower(x).last_hidden_state
    assert out.shape == (2, 1 + 36, WIDTH)
    tower.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).last_hidden_state, out)
    with pytest.raises(ValueError, match="doesn't match model"):
        tower(pixels(IMAGE))


@pytest.mark.parametrize("bad", [0, -3, 2.5, (4, 0), (4,), True, "4", None])
def test_target_grid_must_be_positive_integer(bad):
    table = torch.randn(17, 4)
    with pytest.raises(ValueError, match="target_grid must be a positive integer"):
        resample_position_embeddings(table, bad, mode="bicubic", num_prefix_tokens=1)


def test_resampling_argument_errors():
    table = torch.randn(17, 4)
    with pytest.raises(ValueError, match="unknown position-embedding interpolation 'bilinear'; valid keys: bicubic"):
        resample_position_embeddings(table, 3, mode="bilinear", num_prefix_tokens=1)
    with pytest.raises(ValueError, match="do not form a square grid"):
        resample_position_embeddings(table, 3, mode="bicubic", num_prefix_tokens=0)
    with pytest.raises(ValueError, match="positive multiple of the patch size 8"):
        resize_vit_position_embeddings(build_vit("clip"), 44, mode="bicubic")
    assert POSITION_INTERPOLATIONS.keys() == ["bicubic", "bicubic_antialias"]


# ---------------------------------------------------------------- extra tokens from explicit facts


def test_tower_extra_tokens_clip_siglip():
    assert tower_extra_tokens(vit_config("clip")) == 1
    assert tower_extra_tokens(vit_config("siglip")) == 0


def test_tower_extra_tokens_unknown_model_type_and_override():
    config = ConvNextConfig()
    with pytest.raises(ValueError, match=r"model_type 'convnext'.*clip_vision_model.*num_additional_image_tokens = N"):
        tower_extra_tokens(config)
    config.num_additional_image_tokens = 2
    assert tower_extra_tokens(config) == 2
    clip = vit_config("clip")
    clip.num_additional_image_tokens = 0  # the explicit statement wins over the table
    assert tower_extra_tokens(clip) == 0
    clip.num_additional_image_tokens = -1
    with pytest.raises(ValueError, match="must be a non-negative integer"):
        tower_extra_tokens(clip)


@pytest.mark.parametrize(
    "model_type, fields, expected",
    [
        ("clip_vision_model", {}, 1),
        ("siglip_vision_model", {}, 0),
        ("vit", {}, 1),
        ("dinov2", {}, 1),
        ("dinov2_with_registers", {"num_register_tokens": 3}, 4),
        ("internvl_vision", {}, 1),
    ],
)
def test_extra_token_table_matches_the_built_tower(model_type, fields, expected):
    config = AutoConfig.for_model(
        model_type, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8, **fields,
    )
    assert tower_extra_tokens(config) == expected
    torch.manual_seed(0)
    tower = AutoModel.from_config(config).eval()
    with torch.no_grad():
        tokens = tower(pixels(16, batch=1)).last_hidden_state.shape[1]
    assert tokens - (16 // 8) ** 2 == expected


def test_extra_token_table_lists_siglip2():
    assert "siglip2_vision_model" in TOWER_EXTRA_TOKENS
    assert tower_extra_tokens(AutoConfig.for_model("siglip2_vision_model")) == 0
