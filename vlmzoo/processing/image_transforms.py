"""Pixel operations of the resolution strategies, shared by the image processors (numpy only, torch-free).

Pad-to-square is LLaVA 1.5's ``image_aspect_ratio="pad"``; AnyRes (LLaVA-NeXT) resizes an image to its
pinpoint keeping the aspect ratio and pads it centred before cutting tiles. The geometry these strategies
follow (which pinpoint, which grid, how many tokens) is in ``vlmzoo.geometry``, shared with the models.

Naive dynamic resolution (Qwen2-VL, Wang et al. 2024): :func:`smart_resize` picks the size (multiples of
patch x merge, pixel count clamped), :func:`patchify_frames` packs frames into merge-block-ordered patches, and
:func:`dynamic_resolution_num_tokens` counts the tokens of an image or video without any pixels (the docs' table);
:func:`video_frame_max_pixels` is the per-video token budget. Later families add aspect-ratio tiling and fixed
canvases here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def pad_to_square(image: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Pad a (C, H, W) image to (C, S, S), S = max(H, W), centring it on ``background`` (one value per channel)."""
    channels, height, width = image.shape
    if height == width:
        return image
    side = max(height, width)
    canvas = np.empty((channels, side, side), dtype=image.dtype)
    canvas[:] = np.asarray(background, dtype=image.dtype).reshape(-1, 1, 1)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[:, top : top + height, left : left + width] = image
    return canvas


def pad_centered(image: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """Zero-pad a (C, H, W) image to ``target`` (height, width), centred (extra pixel at the bottom/right)."""
    _, height, width = image.shape
    pad_top, extra_height = divmod(target[0] - height, 2)
    pad_left, extra_width = divmod(target[1] - width, 2)
    padding = ((0, 0), (pad_top, pad_top + extra_height), (pad_left, pad_left + extra_width))
    return np.pad(image, padding, mode="constant", constant_values=0)




# ----- naive dynamic resolution (Qwen2-VL, Wang et al. 2024) ---------------------------------------------------
# transformers' defaults: at least 56*56 pixels, at most 1280 merged 28x28 tokens per image; videos take
# 128..768 merged tokens per frame (Qwen2VLVideoProcessor's size)
DYNAMIC_MIN_PIXELS = 56 * 56
DYNAMIC_MAX_PIXELS = 28 * 28 * 1280
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
# smart_resize refuses images longer than this many times their width (or wider than tall), as transformers does
MAX_ASPECT_RATIO = 200
# the per-video pixel budget keeps this share of ``max_video_tokens`` and never cuts a frame below this many times
# ``min_pixels`` (qwen-vl-utils' VIDEO_TOTAL_PIXELS rule, transformers' ``cap_pixels_per_frame``)
VIDEO_BUDGET_SHARE = 0.9
VIDEO_FRAME_FLOOR = 1.05


def check_positive_int(name: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_pixel_range(min_pixels, max_pixels, factor: int = 28, what: str = "") -> tuple[int, int]:
    """``(min_pixels, max_pixels)`` as ints, or ``ValueError`` for a range no resized image can meet: a bound that is
    not a positive integer, ``min_pixels > max_pixels``, or ``max_pixels`` below one ``factor`` x ``factor`` block
    (transformers would silently return a block bigger than ``max_pixels``). ``what`` prefixes the names (e.g.
    ``"video_"``)."""
    factor = check_positive_int("factor", factor)
    min_pixels = check_positive_int(f"{what}min_pixels", min_pixels)
    max_pixels = check_positive_int(f"{what}max_pixels", max_pixels)
    if min_pixels > max_pixels:
        raise ValueError(
            f"{what}min_pixels ({min_pixels}) is larger than {what}max_pixels ({max_pixels}); no image size fits both"
        )
    if max_pixels < factor * factor:
        raise ValueError(
            f"{what}max_pixels ({max_pixels}) is below one {factor}x{factor} block ({factor * factor} pixels), the "
            f"smallest image the patch grid allows; raise it to at least {factor * factor}"
        )
    return min_pixels, max_pixels


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DYNAMIC_MIN_PIXELS,
    max_pixels: int = DYNAMIC_MAX_PIXELS,
) -> tuple[int, int]:
    """The (height, width) Qwen2-VL resizes an image of (height, width) pixels to: both sides multiples of
    ``factor`` (patch size x merge size), the aspect ratio kept as closely as the rounding allows, the pixel count
    brought into [``min_pixels``, ``max_pixels``].

    Each side is first rounded to the nearest multiple of ``factor`` (Python's ``round``: halves to even); if that
    has more than ``max_pixels`` pixels both sides shrink by ``sqrt(h*w/max_pixels)`` and round down (never below
    ``factor``); if fewer than ``min_pixels`` they grow by ``sqrt(min_pixels/(h*w))`` and round up. Exactly
    transformers' ``smart_resize`` (same float arithmetic; written here because shared code may not import a family's
    module, and tests/test_processor_parity_qwen2_vl.py compares both on 6,800 cases), so a very thin image can still exceed ``max_pixels``
    through the ``factor`` floor, as there. ``ValueError`` for an empty or non-positive size, an aspect ratio over
    ``MAX_ASPECT_RATIO``, and the impossible ranges of :func:`check_pixel_range`.
    """
    if isinstance(height, (int, np.integer)) and isinstance(width, (int, np.integer)) and min(height, width) <= 0:
        raise ValueError(f"empty image: {height}x{width} pixels (height x width); both sides must be positive")
    height, width = check_positive_int("height", height), check_positive_int("width", width)
    min_pixels, max_pixels = check_pixel_range(min_pixels, max_pixels, factor)
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"the image is {height}x{width} pixels (height x width), an aspect ratio of "
            f"{max(height, width) / min(height, width):g}; dynamic resolution allows at most {MAX_ASPECT_RATIO}: crop "
            f"or pad it first"
        )
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def video_frame_max_pixels(
    num_frames: int,
    min_pixels: int,
    max_pixels: int,
    max_video_tokens: int | None,
    factor: int = 28,
    temporal_patch_size: int = 2,
) -> int:
    """The per-frame ``max_pixels`` of a video of ``num_frames`` frames under a token budget.

    ``max_video_tokens=None``: no budget, ``max_pixels`` itself. Otherwise (qwen-vl-utils' rule, transformers'
    ``cap_pixels_per_frame=True``): ``VIDEO_BUDGET_SHARE`` of the budget's pixels (``max_video_tokens * factor**2``)
    shared evenly among the temporal patches, ``min(max_pixels, total * temporal_patch_size // num_frames)``, but
    never below ``int(VIDEO_FRAME_FLOOR * min_pixels)`` (so a long video can exceed the budget rather than lose its
    frames' detail entirely).
    """
    num_frames = check_positive_int("num_frames", num_frames)
    if max_video_tokens is None:
        return max_pixels
    max_video_tokens = check_positive_int("max_video_tokens", max_video_tokens)
    total_pixels = int(max_video_tokens * factor * factor * VIDEO_BUDGET_SHARE)
    return max(min(max_pixels, total_pixels * temporal_patch_size // num_frames), int(min_pixels * VIDEO_FRAME_FLOOR))


def dynamic_resolution_grid(
    height: int,
    width: int,
    min_pixels: int = DYNAMIC_MIN_PIXELS,
    max_pixels: int = DYNAMIC_MAX_PIXELS,
    patch_size: int = 14,
    merge_size: int = 2,
) -> tuple[int, int]:
    """(rows, columns) of ``patch_size`` patches of an image of (height, width) after :func:`smart_resize`."""
    resized_height, resized_width = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    return resized_height // patch_size, resized_width // patch_size


def dynamic_resolution_num_tokens(
    height: int,
    width: int,
    min_pixels: int = DYNAMIC_MIN_PIXELS,
    max_pixels: int = DYNAMIC_MAX_PIXELS,
    patch_size: int = 14,
    merge_size: int = 2,
    num_frames: int = 1,
    temporal_patch_size: int = 2,
) -> int:
    """Visual tokens (LLM positions) of an image, or of a ``num_frames``-frame video, of (height, width) pixels.

    ``grid_t * grid_h * grid_w / merge_size**2`` with the grid of :func:`dynamic_resolution_grid` and
    ``grid_t = ceil(num_frames / temporal_patch_size)`` (an image is one temporal patch: two identical frames). For a
    video under a token budget pass ``max_pixels=video_frame_max_pixels(...)``. E.g. a 224x224 image with the defaults:
    an 8x8 merged grid, 64 tokens. Torch-free: the docs' table of tokens against image size comes from here.
    """
    grid_h, grid_w = dynamic_resolution_grid(height, width, min_pixels, max_pixels, patch_size, merge_size)
    grid_t = -(-check_positive_int("num_frames", num_frames) // check_positive_int("temporal_patch_size", temporal_patch_size))
    return grid_t * grid_h * grid_w // (merge_size * merge_size)


def patchify_frames(
    frames: np.ndarray, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Flatten (T, C, H, W) frames into Qwen2-VL's packed patches, ``(grid_t * grid_h * grid_w, C * tp * p * p)``.

    H and W must be multiples of ``patch_size * merge_size`` (what :func:`smart_resize` gives). The frame count is
    padded to a multiple of ``temporal_patch_size`` by repeating the last frame (an image, T = 1, becomes two
    identical frames). Patches come in merge-block order: row-major over the (grid_h / m, grid_w / m) blocks, then
    row-major inside each m x m block, so that every ``merge_size**2`` consecutive rows are one merged token; each
    row is (C, tp, p, p) flattened. Returns the patches (float32) and ``(grid_t, grid_h, grid_w)``.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a non-empty (T, C, H, W) array, got shape {frames.shape}")
    num_frames, channels, height, width = frames.shape
    factor = patch_size * merge_size
    if height % factor or width % factor:
        raise ValueError(f"frames of {height}x{width} pixels do not split into {factor}x{factor} merge blocks")
    if pad := -num_frames % temporal_patch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], pad, axis=0)], axis=0)  # (T + pad, C, H, W)
    grid_t, grid_h, grid_w = frames.shape[0] // temporal_patch_size, height // patch_size, width // patch_size
    # (T, C, H, W) -> (gt, tp, C, gh/m, m, p, gw/m, m, p)
    patches = frames.reshape(
        grid_t, temporal_patch_size, channels, grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
    )  # fmt: skip
    # -> (gt, gh/m, gw/m, m, m, C, tp, p, p)
    patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = patches.reshape(grid_t * grid_h * grid_w, channels * temporal_patch_size * patch_size * patch_size)
    return np.ascontiguousarray(flat), (grid_t, grid_h, grid_w)
