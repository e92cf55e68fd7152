"""Fusion registry: the modules that merge several vision branches into one token sequence (docs/design.md §3, §4).

A model with more than one tower (a high-resolution branch, or N experts) fuses their features before the
projector. The generic fusions live here:

- ``sequence_concat``: the branches' token sequences one after the other (B, N_1 + ... + N_k, C).
- ``channel_concat``: every branch brought to one token grid with a named resize mode, then concatenated along
  channels (B, H * W, C_1 + ... + C_k). EAGLE's channel concatenation of its vision experts (Shi et al. 2024):
  each expert's output resized to a 32x32 grid (bilinear, ``align_corners=True``) and stacked on channels.
- ``interleave``: one token from each branch in turn (B, k * N, C). LEO's merge of its InternViT and SAM tokens
  (``merged[:, 0::2] = vit; merged[:, 1::2] = sam``), for k branches.

The papers' fusion modules register here in their own issues: LLaVA-HR's MR-Adapter (``mr_adapter``),
Mini-Gemini's patch-info mining (``patch_info_mining``) and FILA's CVFM (``cvfm``). Each is a :class:`ZooFusion`
subclass decorated with ``@register_fusion("key")``: its constructor's keyword arguments are its options (explicit
sizes: channels, widths, grids; never a config), ``forward(*branches)`` takes the branches in the family's order and
returns (B, tokens, channels), and ``out_features`` / ``num_output_tokens`` say what it makes of the branches'
widths and token counts (what the projector and the processor need). ``build_fusion(key, **options)`` builds one;
an unknown key or option raises ``ValueError`` naming the valid ones. Fusions with parameters initialise them
through ``_init_zoo_weights`` (the skeleton calls it, also after a meta-device load).

Branches are token sequences (B, N, C) or, where a fusion says so, channels-first maps (B, C, H, W). A token
sequence on a grid is square and in raster order (row by row), as ViT patch tokens are once the class token is
dropped. A branch of the wrong form raises ``ValueError`` naming every branch's shape.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Callable, ClassVar

import torch
from torch import nn

from ..registry import Registry
from .vision_towers import check_resize, resize_maps

FUSIONS: Registry = Registry("fusion")


def register_fusion(key: str) -> Callable[[type["ZooFusion"]], type["ZooFusion"]]:
    """Register a :class:`ZooFusion` subclass under ``key`` and tell it its key."""

    def decorator(cls: type[ZooFusion]) -> type[ZooFusion]:
        cls.fusion_type = key
        return FUSIONS.register(key)(cls)

    return decorator


def _shapes(branches: Sequence[torch.Tensor]) -> list:
    return [tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__ for b in branches]


class ZooFusion(nn.Module):
    """Base of the registered fusions: ``forward(*branches) -> (B, tokens, channels)``."""

    fusion_type: ClassVar[str] = ""

    def out_features(self, branch_features: Sequence[int]) -> int:
        """Channels of the fused tokens, from each branch's channels (in order)."""
        raise NotImplementedError

    def num_output_tokens(self, branch_tokens: Sequence[int]) -> int:
        """Tokens of the fused sequence, from each branch's token count (in order)."""
        raise NotImplementedError

    def _check_branches(self, branches: Sequence[torch.Tensor], dims: tuple[int, ...], form: str) -> None:
        """``ValueError`` naming every shape unless there is a branch, each a tensor of ``dims`` dimensions, one batch."""
        if not branches:
            raise ValueError(f"fusion '{self.fusion_type}' needs at least one branch, got none")
        if not all(isinstance(b, torch.Tensor) and b.dim() in dims for b in branches):
            raise ValueError(f"fusion '{self.fusion_type}' takes {form} branches; got shapes {_shapes(branches)}")
        if len({b.shape[0] for b in branches}) != 1:
            raise ValueError(
                f"fusion '{self.fusion_type}' needs one batch size in every branch; got shapes {_shapes(branches)}"
            )


@register_fusion("sequence_concat")
class SequenceConcatFusion(ZooFusion):
    """The branches' token sequences one after the other: (B, N_i, C) each -> (B, N_1 + ... + N_k, C)."""

    def out_features(self, branch_features: Sequence[int]) -> int:
        if len(set(branch_features)) != 1:
            raise ValueError(f"fusion 'sequence_concat' needs one width in every branch, got {list(branch_features)}")
        return int(branch_features[0])

    def num_output_tokens(self, branch_tokens: Sequence[int]) -> int:
        return int(sum(branch_tokens))

    def forward(self, *branches: torch.Tensor) -> torch.Tensor:
        self._check_branches(branches, (3,), "(batch, tokens, channels)")
        if len({b.shape[-1] for b in branches}) != 1:
            raise ValueError(
                f"fusion 'sequence_concat' needs one channel width in every branch (project them first); got shapes "
                f"{_shapes(branches)}"
            )
        return torch.cat(branches, dim=1)  # (B, N_1 + ... + N_k, C)


def _grid_side(tokens: int) -> int | None:
    side = math.isqrt(tokens) if tokens > 0 else 0
    return side if side > 0 and side * side == tokens else None


@register_fusion("channel_concat")
class ChannelConcatFusion(ZooFusion):
    """Every branch brought to one grid, concatenated along channels: -> (B, H * W, C_1 + ... + C_k).

    EAGLE's fusion of its experts. A branch is a square token grid (B, N_i, C_i) in raster order or a channels-first
    map (B, C_i, H_i, W_i) (a ConvNeXt stage); each is resized to the target grid with ``F.interpolate`` in a mode of
    ``vision_towers.RESIZE_MODES`` (a branch already on the target grid is used as it is, as EAGLE's code does).

    Args:
        target_grid: the fused grid, patches per side (int) or (height, width); ``None``: the first branch's grid.
        mode, antialias, align_corners: the resize (EAGLE: ``"bilinear"``, ``align_corners=True``).
    """

    def __init__(
        self,
        target_grid: int | Sequence[int] | None = None,
        mode: str = "bilinear",
        antialias: bool = False,
        align_corners: bool | None = None,
    ):
        super().__init__()
        check_resize(mode, antialias, align_corners)
        if target_grid is not None:
            sides = (target_grid, target_grid) if isinstance(target_grid, int) else tuple(target_grid)
            if len(sides) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides):
                raise ValueError(
                    f"target_grid must be a positive integer or a (height, width) pair of them, got {target_grid!r}"
                )
            target_grid = sides
        self.target_grid = target_grid
        self.mode, self.antialias, self.align_corners = mode, antialias, align_corners

    def out_features(self, branch_features: Sequence[int]) -> int:
        return int(sum(branch_features))

    def num_output_tokens(self, branch_tokens: Sequence[int]) -> int:
        if self.target_grid is not None:
            return self.target_grid[0] * self.target_grid[1]
        return int(branch_tokens[0])

    def _as_map(self, branch: torch.Tensor, branches: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, N, C) square raster tokens -> (B, C, side, side); a (B, C, H, W) map as it is."""
        if branch.dim() == 4:
            return branch
        side = _grid_side(branch.shape[1])
        if side is None:
            raise ValueError(
                f"fusion 'channel_concat' reads (batch, tokens, channels) branches as square grids, but "
                f"{branch.shape[1]} tokens are not a square; got shapes {_shapes(branches)} (drop a class token first)"
            )
        # (B, side*side, C) -> (B, side, side, C) -> (B, C, side, side)
        return branch.reshape(branch.shape[0], side, side, branch.shape[2]).permute(0, 3, 1, 2)

    def forward(self, *branches: torch.Tensor) -> torch.Tensor:
        self._check_branches(branches, (3, 4), "(batch, tokens, channels) or (batch, channels, height, width)")
        maps = [self._as_map(branch, branches) for branch in branches]
        height, width = self.target_grid if self.target_grid is not None else tuple(maps[0].shape[-2:])
        # each (B, C_i, H_i, W_i) -> (B, C_i, height, width)
        aligned = [resize_maps(m, (height, width), self.mode, self.antialias, self.align_corners) for m in maps]
        fused = torch.cat(aligned, dim=1)  # (B, C_1 + ... + C_k, height, width)
        return fused.flatten(2).transpose(1, 2)  # (B, C, height * width) -> (B, height * width, C)


@register_fusion("interleave")
class InterleaveFusion(ZooFusion):
    """One token from each branch in turn: k branches (B, N, C) -> (B, k * N, C), ``fused[:, j::k] = branch j``.

    LEO's merge of its two encoders' tokens per tile, for any number of branches; every branch must have the same
    shape (the tokens pair up one to one).
    """

    def out_features(self, branch_features: Sequence[int]) -> int:
        if len(set(branch_features)) != 1:
            raise ValueError(f"fusion 'interleave' needs one width in every branch, got {list(branch_features)}")
        return int(branch_features[0])

    def num_output_tokens(self, branch_tokens: Sequence[int]) -> int:
        if len(set(branch_tokens)) != 1:
            raise ValueError(f"fusion 'interleave' needs one token count in every branch, got {list(branch_tokens)}")
        return len(branch_tokens) * int(branch_tokens[0])

    def forward(self, *branches: torch.Tensor) -> torch.Tensor:
        self._check_branches(branches, (3,), "(batch, tokens, channels)")
        if len({tuple(b.shape) for b in branches}) != 1:
            raise ValueError(
                f"fusion 'interleave' needs branches of one shape (equal token counts and widths, so that tokens pair "
                f"up one to one); got shapes {_shapes(branches)}"
            )
        batch, tokens, channels = branches[0].shape
        stacked = torch.stack(branches, dim=2)  # (B, N, k, C)
        return stacked.reshape(batch, tokens * len(branches), channels)  # (B, N * k, C): token t of branch j at t*k + j


def build_fusion(key: str, **options) -> ZooFusion:
    """Build the fusion registered under ``key`` with its keyword ``options``.

    ``ValueError`` names the valid keys for an unknown fusion and the fusion's options for an unknown option.
    """
    fusion_class = FUSIONS.get(key)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(fusion_class.__init__).parameters.values()
    valid = [p.name for p in parameters if p.name != "self" and p.kind in named]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"fusion '{key}' has no options {unknown}; its options: {valid or 'none'}")
    return fusion_class(**options)


__all__ = [
    "FUSIONS",
    "ZooFusion",
    "register_fusion",
    "build_fusion",
    "SequenceConcatFusion",
    "ChannelConcatFusion",
    "InterleaveFusion",
]
