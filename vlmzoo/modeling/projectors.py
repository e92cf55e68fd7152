"""Projector registry: the modules that map vision features to the language model's width.

LLaVA 1.0 uses one linear layer, LLaVA 1.5 ``mlp2x_gelu`` (Linear -> GELU -> Linear). Every projector is
an ``nn.Sequential`` so checkpoints keep the original LLaVA numbering (``0.weight``, ``2.weight``).
Later families register ``ln_mlp``, ``pixel_shuffle``, ``c_abstractor``, ``ldp`` and ``perceiver`` here.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as init

from ..registry import Registry

PROJECTORS: Registry = Registry("projector")


@PROJECTORS.register("linear")
def build_linear_projector(in_features: int, out_features: int, bias: bool = True) -> nn.Sequential:
    """LLaVA 1.0: a single ``Linear(in_features -> out_features)``."""
    return nn.Sequential(nn.Linear(in_features, out_features, bias=bias))


@PROJECTORS.register("mlp2x_gelu")
def build_mlp2x_gelu_projector(in_features: int, out_features: int, bias: bool = True) -> nn.Sequential:
    """LLaVA 1.5: ``Linear(in -> out) -> GELU -> Linear(out -> out)``."""
    return nn.Sequential(
        nn.Linear(in_features, out_features, bias=bias),
        nn.GELU(),
        nn.Linear(out_features, out_features, bias=bias),
    )


class ImageNewline(nn.Module):
    """LLaVA-NeXT's learned vector written after every row of AnyRes tile features.

    A module (key ``image_newline.weight``) rather than a bare parameter, so peft's ``modules_to_save``
    can train it next to the projector under LoRA.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))

    def forward(self, rows: int, like: torch.Tensor) -> torch.Tensor:
        """The vector repeated for ``rows`` rows, as (rows, 1, hidden) in ``like``'s dtype and device."""
        return self.weight.to(like).expand(rows, 1, -1)

    def _init_zoo_weights(self) -> None:
        init.normal_(self.weight, mean=0.0, std=1 / math.sqrt(self.weight.shape[0]))


def build_projector(projector_type: str, in_features: int, out_features: int, bias: bool = True) -> nn.Module:
    """Build the projector registered under ``projector_type`` (``ValueError`` names the valid keys)."""
    return PROJECTORS.get(projector_type)(in_features, out_features, bias=bias)
