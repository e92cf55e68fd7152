"""Torch-free geometry facts that processing, configuration and modeling share (docs/design.md §3).

One module, imported by the processors (which decide how many tokens a view makes), the configs (which check
their sizes) and the models (which select and lay out features), so the three can never disagree and
processors never import models. Nothing here imports torch or vlmzoo.modeling; nothing is re-exported through
``vlmzoo.modeling``.

- Towers: how many tokens a vision tower puts before its patches, by the vision config's ``model_type``
  (``TOWER_EXTRA_TOKENS``), and how many a feature-selection strategy drops; so the tokens of one view.
- Grids: LLaVA-NeXT's AnyRes (Liu et al. 2024): the pinpoint an image is fitted to (transformers'
  ``select_best_resolution``: most effective pixels, then least waste), its tile grid, the un-padded region
  of the feature map ("spatial unpad") and the token count of one image.
- Naive dynamic resolution (Qwen2-VL): the LLM tokens of a (t, h, w) patch grid after the m x m patch merger
  (:func:`merged_grid_tokens`); the resize that makes the grid is ``processing.image_transforms.smart_resize``.
- Projectors: what every projector of ``vlmzoo.modeling.projectors.PROJECTORS`` does to the token count, and
  which options it takes (``PROJECTOR_TOKENS``, same keys; ``projectors.py`` checks at import that both agree).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedConfig
from transformers.image_processing_utils import select_best_resolution

from .registry import Registry

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


# ----- grids: naive dynamic resolution (Qwen2-VL) -------------------------------------------------------
def merged_grid_tokens(grid_thw: Sequence[int], merge_size: int) -> int:
    """LLM tokens of one image or video whose patch grid is ``grid_thw`` = (t, h, w) (a row of ``image_grid_thw`` /
    ``video_grid_thw``) after the ``merge_size`` x ``merge_size`` patch merger: ``t * h * w / merge_size**2``.
    ``ValueError`` unless it is three positive integers with h and w multiples of ``merge_size``."""
    sides = [int(side) for side in grid_thw]
    if len(sides) != 3 or min(sides) <= 0 or any(side != value for side, value in zip(sides, grid_thw)):
        raise ValueError(f"a patch grid is three positive integers (t, h, w), got {list(grid_thw)}")
    t, h, w = sides
    if h % merge_size or w % merge_size:
        raise ValueError(f"patch grid {sides}: h and w must be multiples of merge_size={merge_size}")
    return t * h * w // (merge_size * merge_size)


# ----- grids: AnyRes (LLaVA-NeXT) ---------------------------------------------------------------------
def validate_grid_pinpoints(grid_pinpoints: Sequence[Sequence[int]], tile_size: int) -> list[list[int]]:
    """Check AnyRes pinpoints: a non-empty list of [height, width] multiples of the tile size."""
    if isinstance(grid_pinpoints, (str, bytes)) or not grid_pinpoints:
        raise ValueError("image_grid_pinpoints must list at least one [height, width] resolution")
    pinpoints = []
    for pinpoint in grid_pinpoints:
        integers = isinstance(pinpoint, (list, tuple)) and all(
            isinstance(side, numbers.Integral) and not isinstance(side, bool) for side in pinpoint
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


# ----- projectors: token counts and options ---------------------------------------------------------------
SQUARE_GRID_HINT = (
    'the token count must be a perfect square; a tower with a CLS token needs vision_feature_select_strategy="default" '
    "so that only the patch grid reaches the projector"
)


@dataclass(frozen=True)
class ProjectorTokens:
    """A projector's token facts.

    options: option name -> default value (the keyword arguments of the projector module).
    count: (input tokens, resolved options) -> output tokens; raises ``ValueError`` when the input does not fit.
    keeps_grid: output token i sits where input token i was (same count, same layout): AnyRes-compatible.
    check: validates resolved option values (raises ``ValueError``).
    """

    options: Mapping[str, Any]
    count: Callable[[int, dict], int]
    keeps_grid: bool
    check: Callable[[str, dict], None] = field(default=lambda projector_type, options: None)


PROJECTOR_TOKENS: Registry = Registry("projector")


def square_grid_side(num_tokens: int, projector_type: str) -> int:
    """Side of the square token grid of ``num_tokens`` tokens; ``ValueError`` when it is not a perfect square."""
    side = math.isqrt(int(num_tokens)) if num_tokens > 0 else 0
    if side * side != num_tokens or side == 0:
        raise ValueError(
            f"projector '{projector_type}' needs a square grid of tokens, got {num_tokens}: {SQUARE_GRID_HINT}"
        )
    return side


def _require_int(projector_type: str, options: dict, name: str, minimum: int = 1) -> None:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"projector '{projector_type}' option {name} must be an integer >= {minimum}, got {value!r}")


def _require_positive_number(projector_type: str, options: dict, name: str) -> None:
    value = options[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"projector '{projector_type}' option {name} must be a positive number, got {value!r}")


def _same_count(num_tokens: int, options: dict) -> int:
    return int(num_tokens)


PROJECTOR_TOKENS.register("linear")(ProjectorTokens(options={}, count=_same_count, keeps_grid=True))
PROJECTOR_TOKENS.register("mlp2x_gelu")(ProjectorTokens(options={}, count=_same_count, keeps_grid=True))
PROJECTOR_TOKENS.register("ln_mlp")(
    ProjectorTokens(
        options={"layer_norm_eps": 1e-5},
        count=_same_count,
        keeps_grid=True,
        check=lambda kind, options: _require_positive_number(kind, options, "layer_norm_eps"),
    )
)


# ----- pixel_shuffle: space-to-depth by `ratio`, tokens / ratio^2 ------------------------------------------
def _pixel_shuffle_count(num_tokens: int, options: dict) -> int:
    side, ratio = square_grid_side(num_tokens, "pixel_shuffle"), options["ratio"]
    if side % ratio:
        raise ValueError(
            f"projector 'pixel_shuffle' option ratio {ratio} must divide the side of the {side}x{side} token grid"
        )
    return (side // ratio) ** 2


def _pixel_shuffle_check(kind: str, options: dict) -> None:
    _require_int(kind, options, "ratio")
    _require_positive_number(kind, options, "layer_norm_eps")


PROJECTOR_TOKENS.register("pixel_shuffle")(
    ProjectorTokens(
        options={"ratio": 2, "layer_norm_eps": 1e-5},
        count=_pixel_shuffle_count,
        keeps_grid=False,
        check=_pixel_shuffle_check,
    )
)


# ----- c_abstractor: adaptive pooling of the square grid to num_queries (a square) ------------------------
def _c_abstractor_count(num_tokens: int, options: dict) -> int:
    square_grid_side(num_tokens, "c_abstractor")
    return options["num_queries"]


def _c_abstractor_check(kind: str, options: dict) -> None:
    _require_int(kind, options, "num_queries")
    _require_int(kind, options, "depth")
    if options["hidden_size"] is not None:
        _require_int(kind, options, "hidden_size")
    if math.isqrt(options["num_queries"]) ** 2 != options["num_queries"]:
        raise ValueError(
            f"projector 'c_abstractor' option num_queries must be a perfect square (the pooled grid is square), "
            f"got {options['num_queries']}"
        )


PROJECTOR_TOKENS.register("c_abstractor")(
    ProjectorTokens(
        options={"num_queries": 144, "depth": 3, "hidden_size": None},
        count=_c_abstractor_count,
        keeps_grid=False,
        check=_c_abstractor_check,
    )
)


# ----- ldp: one 3x3 stride-2 depthwise convolution (padding 1): side -> ceil(side / 2) ---------------------
def _ldp_count(num_tokens: int, options: dict) -> int:
    side = square_grid_side(num_tokens, "ldp")
    return ((side + 1) // 2) ** 2  # odd sides round up: floor((side + 2 * 1 - 3) / 2) + 1 = ceil(side / 2)


PROJECTOR_TOKENS.register("ldp")(ProjectorTokens(options={}, count=_ldp_count, keeps_grid=False))


# ----- perceiver: num_latents learned queries, whatever the input -----------------------------------------
def _perceiver_check(kind: str, options: dict) -> None:
    for name in ("num_latents", "depth", "num_heads", "head_dim", "ff_mult"):
        _require_int(kind, options, name)
    _require_positive_number(kind, options, "layer_norm_eps")


def _perceiver_count(num_tokens: int, options: dict) -> int:
    if num_tokens < 1:
        raise ValueError(f"projector 'perceiver' needs at least one input token, got {num_tokens}")
    return options["num_latents"]


PROJECTOR_TOKENS.register("perceiver")(
    ProjectorTokens(
        options={"num_latents": 64, "depth": 6, "num_heads": 8, "head_dim": 64, "ff_mult": 4, "layer_norm_eps": 1e-5},
        count=_perceiver_count,
        keeps_grid=False,
        check=_perceiver_check,
    )
)


# ----- the API the config, the processor and the projector modules share ----------------------------------
def projector_options(projector_type: str, projector_config: Mapping[str, Any] | None = None) -> dict:
    """The projector's options: ``projector_config`` over the defaults, names and values checked.

    ``ValueError`` for an unknown projector (naming the valid ones), an unknown option name (naming the
    projector's valid options) or a bad value.
    """
    spec = PROJECTOR_TOKENS.get(projector_type)
    given = dict(projector_config or {})
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        valid = ", ".join(sorted(spec.options)) if spec.options else "none (it takes no options)"
        raise ValueError(f"projector '{projector_type}' got unknown options {unknown}; valid options: {valid}")
    options = {**spec.options, **given}
    spec.check(projector_type, options)
    return options


def projector_num_tokens(
    projector_type: str, num_tokens: int, projector_config: Mapping[str, Any] | None = None
) -> int:
    """Tokens the projector makes from ``num_tokens`` input tokens of one view."""
    options = projector_options(projector_type, projector_config)
    return PROJECTOR_TOKENS.get(projector_type).count(int(num_tokens), options)


def projector_keeps_grid(projector_type: str) -> bool:
    """Whether the projector keeps the tower's token grid (count and layout), as AnyRes needs."""
    return PROJECTOR_TOKENS.get(projector_type).keeps_grid
