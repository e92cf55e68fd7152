"""The fusion registry (vlmzoo/modeling/fusion.py), each generic fusion against a loop-based formula written here.

The grid alignment's resize is checked against ``torch.nn.functional.interpolate`` called directly on the map
that the loops lay out from the tokens; the fusion's own token <-> map reshapes are never used as the reference.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlmzoo.modeling.fusion import FUSIONS, ZooFusion, build_fusion, register_fusion


def tensor(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_the_generic_fusions_are_registered():
    assert {"sequence_concat", "channel_concat", "interleave"} <= set(FUSIONS.keys())
    for key in ("sequence_concat", "channel_concat", "interleave"):
        fusion = build_fusion(key)
        assert isinstance(fusion, ZooFusion) and fusion.fusion_type == key
        assert list(fusion.parameters()) == []


# ----- sequence_concat --------------------------------------------------------------------------------------
def test_sequence_concat_puts_the_branches_one_after_the_other():
    branches = [tensor(2, 3, 5, seed=0), tensor(2, 1, 5, seed=1), tensor(2, 4, 5, seed=2)]
    fused = build_fusion("sequence_concat")(*branches)
    expected = torch.empty(2, 8, 5)
    for b in range(2):
        position = 0
        for branch in branches:
            for n in range(branch.shape[1]):
                expected[b, position] = branch[b, n]
                position += 1
    assert torch.equal(fused, expected)
    fusion = build_fusion("sequence_concat")
    assert fusion.num_output_tokens([3, 1, 4]) == 8 and fusion.out_features([5, 5, 5]) == 5


# ----- interleave -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("count", [1, 2, 3])
def test_interleave_takes_one_token_from_each_branch_in_turn(count):
    branches = [tensor(2, 4, 6, seed=seed) for seed in range(count)]
    fused = build_fusion("interleave")(*branches)
    assert fused.shape == (2, 4 * count, 6)
    for b in range(2):
        for t in range(4):
            for j in range(count):
                assert torch.equal(fused[b, t * count + j], branches[j][b, t])
    if count == 2:  # LEO's form: merged[:, 0::2] = vit, merged[:, 1::2] = sam
        assert torch.equal(fused[:, 0::2], branches[0]) and torch.equal(fused[:, 1::2], branches[1])
    assert build_fusion("interleave").num_output_tokens([4] * count) == 4 * count


# ----- channel_concat ---------------------------------------------------------------------------------------
def _tokens_to_map(tokens: torch.Tensor) -> torch.Tensor:
    """(B, side*side, C) raster tokens -> (B, C, side, side), by loops."""
    batch, count, channels = tokens.shape
    side = int(round(count**0.5))
    grid = torch.empty(batch, channels, side, side)
    for b in range(batch):
        for index in range(count):
            grid[b, :, index // side, index % side] = tokens[b, index]
    return grid


def _channel_concat_by_loops(maps: list[torch.Tensor]) -> torch.Tensor:
    """Maps already on one (H, W) grid -> (B, H*W, sum C), token i*W + j holding every map's channels in order."""
    batch, _, height, width = maps[0].shape
    total = sum(m.shape[1] for m in maps)
    out = torch.empty(batch, height * width, total)
    for b in range(batch):
        for i in range(height):
            for j in range(width):
                offset = 0
                for m in maps:
                    out[b, i * width + j, offset : offset + m.shape[1]] = m[b, :, i, j]
                    offset += m.shape[1]
    return out


@pytest.mark.parametrize(
    "mode, antialias, align_corners",
    [("bilinear", False, True), ("bilinear", True, False), ("bicubic", False, None), ("nearest", False, None)],
)
def test_channel_concat_brings_every_branch_to_the_grid_then_stacks_channels(mode, antialias, align_corners):
    vit = tensor(2, 16, 6, seed=0)  # a 4x4 token grid
    convnext = tensor(2, 5, 8, 8, seed=1)  # a channels-first map, larger
    siglip = tensor(2, 9, 3, seed=2)  # a 3x3 token grid, smaller
    fusion = build_fusion("channel_concat", target_grid=4, mode=mode, antialias=antialias, align_corners=align_corners)
    fused = fusion(vit, convnext, siglip)
    options = {"antialias": antialias, "align_corners": align_corners} if mode != "nearest" else {}
    aligned = [
        _tokens_to_map(vit),  # already 4x4: used as it is
        F.interpolate(convnext, size=(4, 4), mode=mode, **options),
        F.interpolate(_tokens_to_map(siglip), size=(4, 4), mode=mode, **options),
    ]
    assert torch.equal(fused, _channel_concat_by_loops(aligned))
    assert fused.shape == (2, 16, 14)
    assert fusion.out_features([6, 5, 3]) == 14 and fusion.num_output_tokens([16, 64, 9]) == 16


def test_channel_concat_defaults_to_the_first_branch_grid_and_takes_rectangles():
    first = tensor(1, 3, 2, 3, seed=0)  # a (2, 3) map
    second = tensor(1, 4, 4, 6, seed=1)
    fused = build_fusion("channel_concat")(first, second)
    expected = _channel_concat_by_loops([first, F.interpolate(second, size=(2, 3), mode="bilinear")])
    assert torch.equal(fused, expected)
    fused = build_fusion("channel_concat", target_grid=(3, 2), mode="bilinear")(first, second)
    assert fused.shape == (1, 6, 7)


# ----- bad inputs -------------------------------------------------------------------------------------------
BAD_BRANCHES = [
    ("sequence_concat", [(2, 3, 4), (2, 3, 5)], r"one channel width in every branch .* got shapes \[\(2, 3, 4\), \(2, 3, 5\)\]"),
    ("sequence_concat", [(2, 3, 4), (1, 3, 4)], r"one batch size in every branch; got shapes \[\(2, 3, 4\), \(1, 3, 4\)\]"),
    ("sequence_concat", [(2, 4, 4, 4)], r"takes \(batch, tokens, channels\) branches; got shapes \[\(2, 4, 4, 4\)\]"),
    ("sequence_concat", [], "needs at least one branch, got none"),
    ("interleave", [(2, 4, 6), (2, 5, 6)], r"branches of one shape .* got shapes \[\(2, 4, 6\), \(2, 5, 6\)\]"),
    ("interleave", [(2, 4, 6), (2, 4, 7)], r"got shapes \[\(2, 4, 6\), \(2, 4, 7\)\]"),
    ("channel_concat", [(2, 15, 6), (2, 16, 6)], r"15 tokens are not a square; got shapes \[\(2, 15, 6\), \(2, 16, 6\)\]"),
    ("channel_concat", [(2, 16, 6), (3, 5, 4, 4)], r"one batch size in every branch; got shapes \[\(2, 16, 6\), \(3, 5, 4, 4\)\]"),
    ("channel_concat", [(16, 6)], r"takes \(batch, tokens, channels\) or \(batch, channels, height, width\) branches; got shapes \[\(16, 6\)\]"),
]


@pytest.mark.parametrize("key, shapes, fragment", BAD_BRANCHES, ids=[f"{k}-{s}" for k, s, _ in BAD_BRANCHES])
def test_fusions_refuse_branches_they_cannot_merge_naming_the_shapes(key, shapes, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_fusion(key)(*[torch.zeros(*shape) for shape in shapes])


BUILD_ERRORS = [
    (("mr_adapter_typo",), {}, "unknown fusion 'mr_adapter_typo'; valid keys: channel_concat, interleave, sequence_concat"),
    (("channel_concat",), {"grid": 4}, r"fusion 'channel_concat' has no options \['grid'\]; its options: \['target_grid', "),
    (("interleave",), {"ratio": 2}, r"fusion 'interleave' has no options \['ratio'\]; its options: none"),
    (("channel_concat",), {"mode": "area"}, "unknown resize mode 'area'; valid keys: bicubic, bilinear, nearest"),
    (("channel_concat",), {"mode": "nearest", "align_corners": True}, "align_corners=True is refused with mode 'nearest'"),
    (("channel_concat",), {"target_grid": 0}, "target_grid must be a positive integer"),
]


@pytest.mark.parametrize("args, options, fragment", BUILD_ERRORS, ids=[str(o) or a[0] for a, o, _ in BUILD_ERRORS])
def test_build_fusion_names_the_valid_keys_and_options(args, options, fragment):
    with pytest.raises(ValueError, match=fragment):
        build_fusion(*args, **options)


def test_unequal_branches_are_refused_by_the_count_helpers_too():
    with pytest.raises(ValueError, match=r"one token count in every branch, got \[4, 5\]"):
        build_fusion("interleave").num_output_tokens([4, 5])
    with pytest.raises(ValueError, match=r"one width in every branch, got \[4, 5\]"):
        build_fusion("sequence_concat").out_features([4, 5])


def test_a_key_registers_once():
    with pytest.raises(ValueError, match="fusion 'sequence_concat' is already registered"):
        register_fusion("sequence_concat")(type("Again", (ZooFusion,), {}))
