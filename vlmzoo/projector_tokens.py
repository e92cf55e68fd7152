# Copyright 2026 the vlmzoo authors. Licensed under the Apache License, Version 2.0.
"""What every projector does to the token count, and which options it takes (torch-free).

The processor decides how many image tokens a view produces (DESIGN.md §4) but must not import
``vlmzoo.modeling`` (§3), so the facts it needs about a projector live here, keyed by the same names as
``vlmzoo.modeling.projectors.PROJECTORS``: the projector's options with their defaults, how to check their
values, how many tokens it makes from N input tokens, and whether it keeps the token grid (AnyRes lays
tile features out on the tower's patch grid, so only grid-keeping projectors work with it).
``projectors.py`` checks at import that both registries list the same projectors with the same option
defaults, and every projector module checks its output length against :func:`projector_num_tokens`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .registry import Registry

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


__all__ = [
    "PROJECTOR_TOKENS",
    "ProjectorTokens",
    "projector_keeps_grid",
    "projector_num_tokens",
    "projector_options",
    "square_grid_side",
]
