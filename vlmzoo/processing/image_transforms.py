"""Pixel operations of the resolution strategies, shared by the image processors (numpy only).

Pad-to-square is LLaVA 1.5's ``image_aspect_ratio="pad"``; AnyRes (LLaVA-NeXT) resizes an image to its
pinpoint keeping the aspect ratio and pads it centred before cutting tiles. The geometry these strategies
follow (which pinpoint, which grid, how many tokens) is in ``vlmzoo.geometry``, shared with the models. Later
families add aspect-ratio tiling, fixed canvases and smart_resize here.
"""

from __future__ import annotations

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


