"""The view helper (vlmzoo/modeling/vision_towers.py): each tower's input derived from the one pixel tensor.

References are independent of the code under test: PIL's own resizes of the uint8 image, direct
``torch.nn.functional.interpolate`` calls with the same arguments, and the re-normalisation written out per channel
and pixel. Tiny images, CPU.
"""

from __future__ import annotations

import itertools

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from vlmzoo.modeling.vision_towers import RESIZE_MODES, ViewSpec, derive_view, resize_maps

CLIP = (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
IMAGENET = (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD))
SIZES = [(32, 32), (24, 40), (48, 48), (96, 80), (17, 64)]  # down, mixed, up, up, odd


def uint8_image(height: int = 64, width: int = 64, low: int = 0, high: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (height, width, 3), dtype=np.uint8)


def normalise(image: np.ndarray, mean, std) -> torch.Tensor:
    """What a processor hands the model: (1, 3, H, W) float32 of (pixel / 255 - mean) / std."""
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].double() / 255
    return ((pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)).float()


def to_levels(view: torch.Tensor, mean, std) -> np.ndarray:
    """A normalised (1, 3, h, w) view back to 0..255 levels, (h, w, 3) as PIL lays them out."""
    pixels = view.double() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return (pixels[0].permute(1, 2, 0) * 255).numpy()


# PIL resizes a uint8 image in two separable passes (horizontal, then vertical), rounding each to 8 bits, with
# 22-bit fixed-point weights. Against the exact resize it is off by at most 0.5 (final rounding) plus the first
# pass's rounding (0.5) carried through the second pass's weights, 0.5 * sum|w|: sum|w| = 1 for the non-negative
# triangle (bilinear) and at most 1.25 for the a = -0.5 cubic (its negative lobes; torch's antialiased bicubic is
# that kernel). Fixed-point weights add well under 1e-3 levels. Values kept in 32..223 so the cubic's overshoot
# never reaches PIL's intermediate clip to 0..255, which the exact resize does not have.
PIL_TOLERANCE = {"bilinear": 0.5 + 0.5 * 1.0 + 1e-3, "bicubic": 0.5 + 0.5 * 1.25 + 1e-3}
PIL_FILTERS = {"bilinear": PIL.Image.BILINEAR, "bicubic": PIL.Image.BICUBIC}


@pytest.mark.parametrize("size", SIZES, ids=str)
@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
def test_antialiased_resize_matches_pil_within_its_rounding(mode, size):
    image = uint8_image(low=32, high=224)
    spec = ViewSpec(size=size, mode=mode, antialias=True, align_corners=False, mean=IMAGENET[0], std=IMAGENET[1])
    view = derive_view(normalise(image, *CLIP), *CLIP, spec)
    assert view.shape == (1, 3, *size)
    reference = np.asarray(PIL.Image.fromarray(image).resize((size[1], size[0]), PIL_FILTERS[mode]), dtype=np.float64)
    ours = np.clip(to_levels(view, *IMAGENET), 0, 255)
    difference = np.abs(ours - reference).max()
    assert difference <= PIL_TOLERANCE[mode], difference
    assert difference > 0  # PIL rounds to 8 bits: an exact match would mean the comparison saw PIL's own output


def _resize_options():
    """Every valid (mode, antialias, align_corners) combination: the interpolating modes take both options."""
    for mode in RESIZE_MODES:
        if RESIZE_MODES.get(mode).interpolates:
            for antialias, align_corners in itertools.product([False, True], [None, False, True]):
                yield mode, antialias, align_corners
        else:
            yield mode, False, None


@pytest.mark.parametrize("size", [(20, 28), (64, 64), (90, 70)], ids=str)
@pytest.mark.parametrize("options", list(_resize_options()), ids=lambda o: "-".join(map(str, o)))
def test_resize_is_exactly_torch_interpolate_with_the_same_arguments(options, size):
    mode, antialias, align_corners = options
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    spec = ViewSpec(size=size, mode=mode, antialias=antialias, align_corners=align_corners, mean=CLIP[0], std=CLIP[1])
    kwargs = {"antialias": antialias, "align_corners": align_corners} if mode in ("bilinear", "bicubic") else {}
    expected = F.interpolate(pixels, size=size, mode=mode, **kwargs)
    # equal statistics: the view is the resize alone (a (64, 64) target is the same-size case, returned as is)
    assert torch.equal(derive_view(pixels, *CLIP, spec), expected)
    assert torch.equal(resize_maps(pixels, size, mode, antialias, align_corners), expected)


def test_an_int_size_is_a_square():
    spec = ViewSpec(size=24, mean=CLIP[0], std=CLIP[1])
    assert spec.size == (24, 24)
    assert derive_view(torch.randn(1, 3, 64, 64), *CLIP, spec).shape == (1, 3, 24, 24)


def test_half_precision_is_resized_in_float32_and_returned_in_its_dtype():
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    resized = resize_maps(pixels, (24, 40), "bicubic", antialias=True, align_corners=False)
    expected = F.interpolate(pixels.float(), size=(24, 40), mode="bicubic", antialias=True, align_corners=False)
    assert resized.dtype == torch.bfloat16
    assert torch.equal(resized, expected.bfloat16())


def _renormalise_by_hand(view: torch.Tensor, source, target) -> torch.Tensor:
    """Per channel and pixel: back to pixel values with the source statistics, forward with the target's."""
    (source_mean, source_std), (target_mean, target_std) = source, target
    out = torch.empty_like(view, dtype=torch.float64)
    for b, c, i, j in itertools.product(*(range(n) for n in view.shape)):
        pixel = float(view[b, c, i, j]) * source_std[c] + source_mean[c]
        out[b, c, i, j] = (pixel - target_mean[c]) / target_std[c]
    return out


@pytest.mark.parametrize("size", [(64, 64), (8, 12)], ids=str)
def test_renormalisation_is_the_per_channel_formula(size):
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    spec = ViewSpec(size=size, mode="bilinear", align_corners=True, mean=IMAGENET[0], std=IMAGENET[1])
    view = derive_view(pixels, *CLIP, spec)
    resized = F.interpolate(pixels, size=size, mode="bilinear", align_corners=True)
    expected = _renormalise_by_hand(resized, CLIP, IMAGENET)
    torch.testing.assert_close(view.double(), expected, rtol=0, atol=1e-5)  # float32 rounding of the affine map
    # CLIP and ImageNet statistics differ: the view is not the resize alone
    assert (view - resized).abs().max() > 0.01


def test_renormalising_before_or_after_the_resize_agrees():
    """The resize's weights sum to one, so it commutes with the per-channel affine re-normalisation."""
    pixels = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    spec = ViewSpec(size=(20, 36), mode="bicubic", antialias=True, mean=IMAGENET[0], std=IMAGENET[1])
    renormalised_first = _renormalise_by_hand(pixels, CLIP, IMAGENET)
    expected = F.interpolate(renormalised_first, size=(20, 36), mode="bicubic", antialias=True)
    torch.testing.assert_close(derive_view(pixels, *CLIP, spec), expected, rtol=0, atol=1e-12)


# ----- errors ---------------------------------------------------------------------------------------------------
SPEC_ERRORS = [
    (dict(mode="lanczos"), ValueError, "unknown resize mode 'lanczos'; valid keys: bicubic, bilinear, nearest, nearest-exact"),
    (dict(mode="nearest", align_corners=False), ValueError, "align_corners=False is refused with mode 'nearest'"),
    (dict(mode="nearest-exact", align_corners=True), ValueError, "align_corners=True is refused with mode 'nearest-exact'"),
    (dict(mode="nearest", antialias=True), ValueError, r"antialias=True is refused with mode 'nearest'.*\['bicubic', 'bilinear'\]"),
    (dict(antialias="yes"), TypeError, "antialias must be True or False"),
    (dict(size=0), ValueError, r"ViewSpec size must be a positive integer or a \(height, width\) pair"),
    (dict(size=(32, 32, 3)), ValueError, "ViewSpec size must be"),
    (dict(std=(0.2, 0.0, 0.2)), ValueError, "the view's std must be positive in every channel"),
    (dict(std=(0.2, 0.2)), ValueError, "the view's mean has 3 channels but its std 2"),
    (dict(mean=()), ValueError, "the view's mean must be a non-empty sequence"),
    (dict(mean=(0.5, float("nan"), 0.5)), ValueError, "the view's mean must hold finite numbers"),
]


@pytest.mark.parametrize("change, error, fragment", SPEC_ERRORS, ids=[str(e[0]) for e in SPEC_ERRORS])
def test_view_spec_refuses_what_no_resize_can_do(change, error, fragment):
    fields = {"size": 32, "mode": "bilinear", "mean": CLIP[0], "std": CLIP[1], **change}
    with pytest.raises(error, match=fragment):
        ViewSpec(**fields)


VIEW_ERRORS = [
    ("four-channels", lambda: torch.randn(2, 4, 64, 64), CLIP, ValueError,
     r"pixel_values of shape \(2, 4, 64, 64\) have 4 channels, but the processor's statistics have 3 and the view's 3"),
    ("three-dims", lambda: torch.randn(3, 64, 64), CLIP, ValueError,
     r"derive_view takes pixel_values of shape \(batch, channels, height, width\); got \(3, 64, 64\)"),
    ("integer-pixels", lambda: torch.zeros(1, 3, 8, 8, dtype=torch.uint8), CLIP, TypeError,
     r"floating-point \(normalised\) pixel_values, got dtype torch\.uint8"),
    ("source-statistics-of-two-channels", lambda: torch.randn(1, 3, 8, 8), ((0.5, 0.5), (0.5, 0.5)), ValueError,
     "have 3 channels, but the processor's statistics have 2"),
    ("source-std-zero", lambda: torch.randn(1, 3, 8, 8), ((0.5,) * 3, (0.5, 0, 0.5)), ValueError,
     "the processor's std must be positive"),
]


@pytest.mark.parametrize("name, pixels, source, error, fragment", VIEW_ERRORS, ids=[e[0] for e in VIEW_ERRORS])
def test_derive_view_refuses_pixels_it_cannot_read(name, pixels, source, error, fragment):
    spec = ViewSpec(size=16, mean=CLIP[0], std=CLIP[1])
    with pytest.raises(error, match=fragment):
        derive_view(pixels(), *source, spec)


def test_resize_maps_refuses_tokens():
    with pytest.raises(ValueError, match=r"resize_maps takes \(batch, channels, height, width\) maps; got \(2, 16, 8\)"):
        resize_maps(torch.randn(2, 16, 8), 4, "bilinear")


def test_derive_view_takes_a_view_spec():
    with pytest.raises(TypeError, match="spec must be a ViewSpec, got dict"):
        derive_view(torch.randn(1, 3, 8, 8), *CLIP, {"size": 4})
