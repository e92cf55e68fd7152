"""Resolution strategies and token counts shared by image processors and models.

Token counts of one view: how many tokens a tower puts before its patches (explicit facts per vision
``model_type``), how many leading tokens a feature-selection strategy drops, and so how many tokens one view
yields; processors count with them and models select with them, without processors importing models.

Pad-to-square is LLaVA 1.5's ``image_aspect_ratio="pad"``; AnyRes is LLaVA-NeXT's: pick the grid
resolution that best fits the image (``select_best_resolution`` from transformers: most effective pixels,
then least waste), resize keeping the aspect ratio, pad centred, cut into tower-sized tiles, add a base
view. The same functions count tokens in the processor and un-pad features in the model, so the two can
never disagree. Later families add aspect-ratio tiling, fixed canvases and smart_resize here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from transformers import PreTrainedConfig
from transformers.image_processing_utils import select_best_resolution

# ----- token counts of one view ------------------------------------------------------------------------
# leading tokens each vision_feature_select_strategy drops: LLaVA's "default" drops the CLS token
DROPPED_TOKENS: dict[str, int] = {"default": 1, "full": 0}


def dropped_tokens(select_strategy: str) -> int:
    """Leading tokens ``select_strategy`` drops (``ValueError`` names the valid strategies)."""
    if select_strategy not in DROPPED_TOKENS:
        raise ValueError(
            f"unknown vision_feature_select_strategy {select_strategy!r}; valid strategies: {', '.join(DROPPED_TOKENS)}"
        )
    return DROPPED_TOKENS[select_strategy]


EXTRA_TOKENS_ATTRIBUTE = "num_additional_image_tokens"

# Tokens a tower puts in front of its patch tokens, by the vision config's ``model_type``; each entry was
# checked against the embeddings module of the installed transformers (5.24).
TOWER_EXTRA_TOKENS: dict[str, Callable[[PreTrainedConfig], int]] = {
    "clip_vision_model": lambda config: 1,  # CLIPVisionEmbeddings.class_embedding
    "siglip_vision_model": lambda config: 0,  # patches only
    "siglip2_vision_model": lambda config: 0,  # patches only (NaFlex)
    "vit": lambda config: 1,  # ViTEmbeddings.cls_token
    "dinov2": lambda config: 1,  # Dinov2Embeddings.cls_token
    # cls_token, then num_register_tokens register tokens, then the patches
    "dinov2_with_registers": lambda config: 1 + int(config.num_register_tokens),
    "internvl_vision": lambda config: 1,  # InternVLVisionEmbeddings.cls_token
}


def tower_extra_tokens(vision_config: PreTrainedConfig) -> int:
    """Tokens the tower adds besides its patches (CLS, registers), from explicit facts.

    ``vision_config.num_additional_image_tokens``, when set, states the count explicitly and wins;
    otherwise the count comes from ``TOWER_EXTRA_TOKENS`` keyed by the config's ``model_type``
    (CLIP 1, SigLIP 0, ...). An unknown ``model_type`` without the explicit attribute raises ``ValueError``.
    """
    explicit = getattr(vision_config, EXTRA_TOKENS_ATTRIBUTE, None)
    if explicit is not None:
        if isinstance(explicit, bool) or not isinstance(explicit, int) or explicit < 0:
            raise ValueError(f"{EXTRA_TOKENS_ATTRIBUTE} must be a non-negative integer, got {explicit!r}")
        return explicit
    model_type = getattr(vision_config, "model_type", None)
    if model_type not in TOWER_EXTRA_TOKENS:
        raise ValueError(
            f"unknown number of extra (CLS/register) tokens for vision model_type {model_type!r}; known model "
            f"types: {', '.join(sorted(TOWER_EXTRA_TOKENS))}. State it explicitly with "
            f"`vision_config.{EXTRA_TOKENS_ATTRIBUTE} = N` (the tokens the tower puts before its patches)."
        )
    return int(TOWER_EXTRA_TOKENS[model_type](vision_config))


def tokens_per_view(height: int, width: int, patch_size: int, extra_tokens: int, select_strategy: str) -> int:
    """Visual tokens of one (height, width) view after feature selection (LLaVA's count)."""
    return (height // patch_size) * (width // patch_size) + extra_tokens - dropped_tokens(select_strategy)


# ----- resolution strategies ---------------------------------------------------------------------------


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


def validate_grid_pinpoints(grid_pinpoints: Sequence[Sequence[int]], tile_size: int) -> list[list[int]]:
    """Check AnyRes pinpoints: a non-empty list of [height, width] multiples of the tile size."""
    if isinstance(grid_pinpoints, (str, bytes)) or not grid_pinpoints:
        raise ValueError("image_grid_pinpoints must list at least one [height, width] resolution")
    pinpoints = []
    for pinpoint in grid_pinpoints:
        integers = isinstance(pinpoint, (list, tuple)) and all(
            isinstance(side, (int, np.integer)) and not isinstance(side, bool) for side in pinpoint
        )
        if not integers or len(pinpoint) != 2 or any(side <= 0 or side % tile_size for side in pinpoint):
            raise ValueError(
                f"each image_grid_pinpoints entry must be [height, width], positive multiples of the tile size "
                f"{tile_size}; got {pinpoint!r}"
            )
        pinpoints.append([int(pinpoint[0]), int(pinpoint[1])])
    return pinpoints


def anyres_target_resolution(image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) pinpoint an image of ``image_size`` (height, width) is resized and padded to."""
    height, width = (int(side) for side in image_size)
    return tuple(select_best_resolution((height, width), [list(p) for p in grid_pinpoints]))


def anyres_grid_shape(
    image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: int
) -> tuple[int, int]:
    """(rows, columns) of tiles that AnyRes cuts an image of ``image_size`` into."""
    target_height, target_width = anyres_target_resolution(image_size, grid_pinpoints)
    return target_height // tile_size, target_width // tile_size


def anyres_num_views(image_size: Sequence[int], grid_pinpoints: Sequence[Sequence[int]], tile_size: int) -> int:
    """Tiles plus the base view."""
    rows, columns = anyres_grid_shape(image_size, grid_pinpoints, tile_size)
    return rows * columns + 1


def pad_centered(image: np.ndarray, target: Sequence[int]) -> np.ndarray:
    """Zero-pad a (C, H, W) image to ``target`` (height, width), centred (extra pixel at the bottom/right)."""
    _, height, width = image.shape
    pad_top, extra_height = divmod(target[0] - height, 2)
    pad_left, extra_width = divmod(target[1] - width, 2)
    padding = ((0, 0), (pad_top, pad_top + extra_height), (pad_left, pad_left + extra_width))
    return np.pad(image, padding, mode="constant", constant_values=0)


def unpadded_region(original_size: Sequence[int], grid_size: Sequence[int]) -> tuple[int, int, int, int]:
    """Region (top, height, left, width) of a (grid_h, grid_w) feature map that holds the image, not padding.

    AnyRes padded the image centred on its grid; this undoes that at feature resolution ("spatial unpad").
    """
    original_height, original_width = (int(side) for side in original_size)
    grid_height, grid_width = grid_size
    if original_width / original_height > grid_width / grid_height:
        content_height = int(round(original_height * (grid_width / original_width), 7))
        padding = (grid_height - content_height) // 2
        return padding, grid_height - 2 * padding, 0, grid_width
    content_width = int(round(original_width * (grid_height / original_height), 7))
    padding = (grid_width - content_width) // 2
    return 0, grid_height, padding, grid_width - 2 * padding


def anyres_num_tokens(
    image_size: Sequence[int],
    grid_pinpoints: Sequence[Sequence[int]],
    tile_size: int,
    patch_size: int,
    tokens_per_view: int,
) -> int:
    """Visual tokens of one AnyRes image: base view + un-padded tile grid + one newline per feature row."""
    rows, columns = anyres_grid_shape(image_size, grid_pinpoints, tile_size)
    patches_per_side = tile_size // patch_size
    _, height, _, width = unpadded_region(image_size, (rows * patches_per_side, columns * patches_per_side))
    return tokens_per_view + height * width + height
